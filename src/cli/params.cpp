#include "cli/params.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/hf_checkpoint.h"
#include "model/memory_estimate.h"
#include "model/param_count.h"
#include "run/train_options.h"
#include "tensor/error.h"
#include "tensor/memory_available.h"
#include "tensor/threads.h"

namespace moe::cli {
namespace {

std::string human(double n) {
  char buf[32];
  if (n >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  else if (n >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e4)
    std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

void print_one(const ArchSpec& a, const ParamCount& c) {
  std::printf("%s\n", a.name.c_str());
  std::printf("  total parameters      %12s  (%lld)\n", human(double(c.total)).c_str(),
              static_cast<long long>(c.total));
  std::printf("  active per token      %12s  (%lld, %.1f%% of total)\n",
              human(double(c.active)).c_str(), static_cast<long long>(c.active),
              100.0 * double(c.active) / double(c.total));
  std::printf("  forward FLOPs / token %12s  (at context %lld)\n",
              human(c.forward_flops_per_token).c_str(), static_cast<long long>(a.context));
  const std::pair<const char*, int64_t> parts[] = {{"embeddings + LM head", c.embeddings},
                                                   {"attention", c.attention},
                                                   {"norms", c.norms},
                                                   {"dense FFN", c.dense_ffn},
                                                   {"routers", c.routers},
                                                   {"routed experts", c.routed_experts},
                                                   {"  of which active", c.routed_experts_active},
                                                   {"shared experts", c.shared_experts}};
  for (const auto& [name, n] : parts)
    if (n > 0) std::printf("    %-22s %10s\n", name, human(double(n)).c_str());
  if (a.published_total > 0) {
    std::printf("  published: %s total", human(a.published_total).c_str());
    if (a.published_active > 0) std::printf(", %s active", human(a.published_active).c_str());
    std::printf("  (ours/published: total %.3f", double(c.total) / a.published_total);
    if (a.published_active > 0) std::printf(", active %.3f", double(c.active) / a.published_active);
    std::printf(")\n  source: %s\n", a.source.c_str());
  }
}

// The model config a memory estimate needs: --config, or the two presets that are ours.
ModelConfig config_for_memory(const ParamsOptions& o) {
  if (!o.config.empty()) return load_any_model_config(o.config);
  if (o.preset.empty() || o.preset == "default") return default_model_config();
  if (o.preset == "dense-baseline") return dense_baseline_model_config();
  throw Error(
      "moe params: the training memory estimate needs a model config: --config FILE, "
      "or --preset default or dense-baseline (preset '" +
      o.preset + "' has none)");
}

// The training memory estimate at --batch-size x --seq-len: printed, or added to `out`.
void training_memory(const ParamsOptions& o, nlohmann::json* out) {
  const ModelConfig config = config_for_memory(o);
  const TrainOptions train_defaults;
  TrainingShape shape;
  shape.batch = o.batch_size > 0 ? o.batch_size : train_defaults.batch_size;
  shape.seq = o.seq_len > 0 ? o.seq_len : train_defaults.seq_len;
  shape.threads = thread_count();
  if (shape.seq > config.max_position_embeddings)
    throw Error("--seq-len " + std::to_string(shape.seq) + " exceeds the model's " +
                "max_position_embeddings " + std::to_string(config.max_position_embeddings));
  const MemoryEstimate e = estimate_training_memory(config, shape);
  const AvailableMemory available = available_memory();
  const bool fits = memory_fits(e, available);
  if (out) {
    nlohmann::json parts = nlohmann::json::object();
    for (const auto& [name, bytes] : e.parts()) parts[name] = bytes;
    (*out)["training_memory"] = {{"batch_size", shape.batch},
                                 {"seq_len", shape.seq},
                                 {"threads", shape.threads},
                                 {"bytes", e.total()},
                                 {"parts", parts},
                                 {"address_space_bytes", e.address_space},
                                 {"available_bytes", available.bytes},
                                 {"limited_by", available.limited_by},
                                 {"fits", fits}};
    return;
  }
  std::printf(
      "  training memory       %12s  (moe train at --batch-size %lld x --seq-len %lld, "
      "%d threads)\n",
      format_bytes(e.total()).c_str(), static_cast<long long>(shape.batch),
      static_cast<long long>(shape.seq), shape.threads);
  for (const auto& [name, bytes] : e.parts())
    std::printf("    %-22s %10s\n", name.c_str(), format_bytes(bytes).c_str());
  if (e.address_space > 0)
    std::printf("    (and %s of address space reserved, counted only under ulimit -v)\n",
                format_bytes(e.address_space).c_str());
  std::printf("  this process may use  %12s  (%s): %s\n", format_bytes(available.bytes).c_str(),
              available.limited_by.empty() ? "no limit found" : available.limited_by.c_str(),
              fits ? "fits" : "does NOT fit; moe train would refuse it");
}

}  // namespace

void add_params_memory_options(CLI::App& params, ParamsOptions& o) {
  params
      .add_option("--batch-size", o.batch_size,
                  "Also estimate moe train's memory at this batch (default with --seq-len: 32)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  params
      .add_option("--seq-len", o.seq_len,
                  "Also estimate moe train's memory at this sequence length (default with "
                  "--batch-size: 128)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
}

int run_params(const ParamsOptions& o) {
  if (!o.preset.empty() && !o.config.empty())
    throw Error("moe params: give --preset or --config, not both");
  std::vector<ArchSpec> archs;
  if (!o.preset.empty()) {
    auto a = find_preset(o.preset);
    if (!a) {
      std::string names;
      for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
      throw Error("moe params: unknown preset '" + o.preset + "' (known: " + names + ")");
    }
    archs.push_back(*a);
  } else if (!o.config.empty()) {
    archs.push_back(arch_from_model_config(load_any_model_config(o.config), o.config));
  } else {
    for (const auto& n : preset_names()) archs.push_back(*find_preset(n));
  }
  const bool memory = o.batch_size > 0 || o.seq_len > 0;
  if (memory && archs.size() > 1) archs = {*find_preset("default")};  // the model moe train runs
  nlohmann::json out = nlohmann::json::array();
  const bool table = archs.size() > 1 && !o.json;
  if (table)
    std::printf("%-20s %10s %10s %8s %14s %12s\n", "preset", "total", "active", "active%",
                "fwd FLOP/tok", "vs published");
  for (ArchSpec& a : archs) {
    if (o.context > 0) a.context = o.context;
    const ParamCount c = count_params(a);
    if (o.json) {
      out.push_back(param_count_to_json(a, c));
      if (memory) training_memory(o, &out.back());
    } else if (table) {
      std::string vs = "-";
      if (a.published_total > 0) {
        char buf[48];
        std::snprintf(buf, sizeof buf, "%.3f", double(c.total) / a.published_total);
        vs = buf;
        if (a.published_active > 0) {
          std::snprintf(buf, sizeof buf, " / %.3f", double(c.active) / a.published_active);
          vs += buf;
        }
      }
      std::printf("%-20s %10s %10s %7.1f%% %14s %12s\n", a.name.c_str(),
                  human(double(c.total)).c_str(), human(double(c.active)).c_str(),
                  100.0 * double(c.active) / double(c.total),
                  human(c.forward_flops_per_token).c_str(), vs.c_str());
    } else {
      print_one(a, c);
      if (memory) training_memory(o, nullptr);
    }
  }
  if (o.json) std::printf("%s\n", (out.size() == 1 ? out[0] : out).dump(2).c_str());
  return 0;
}

}  // namespace moe::cli
