#include "cli/params.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/param_count.h"
#include "tensor/error.h"

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

}  // namespace

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
    archs.push_back(arch_from_model_config(load_model_config(o.config), o.config));
  } else {
    for (const auto& n : preset_names()) archs.push_back(*find_preset(n));
  }
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
    }
  }
  if (o.json) std::printf("%s\n", (out.size() == 1 ? out[0] : out).dump(2).c_str());
  return 0;
}

}  // namespace moe::cli
