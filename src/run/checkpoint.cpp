#include "run/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <filesystem>

#include "model/checkpoint.h"
#include "run/run_folder.h"
#include "tensor/atomic_file.h"
#include "tensor/error.h"
#include "tensor/safetensors.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

constexpr const char* kTensorFiles[] = {"model.safetensors", "optimizer.safetensors"};

// AdamW's moments with their tensor-name suffixes (PyTorch's state names).
std::array<std::pair<const char*, Tensor*>, 2> moment_tensors(AdamW& opt) {
  return {{{".exp_avg", &opt.first_moment()}, {".exp_avg_sq", &opt.second_moment()}}};
}

std::map<std::string, Tensor> optimizer_tensors(ParamStore& store, AdamW& opt) {
  std::map<std::string, Tensor> out;
  for (const auto& e : store.entries())
    for (auto [suffix, moment] : moment_tensors(opt)) {
      Tensor t(e.shape);
      std::copy_n(moment->data() + e.ref.offset, e.ref.numel, t.data());
      out.emplace(e.name + suffix, std::move(t));
    }
  return out;
}

int64_t step_of(const SafetensorsFile& f, const std::string& path) {
  auto it = f.metadata.find("step");
  if (it == f.metadata.end()) throw Error(path + ": no 'step' in its metadata");
  const std::string& text = it->second;
  int64_t step = -1;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), step);
  if (err == std::errc::result_out_of_range)
    throw Error(path + ": metadata 'step' \"" + text + "\" is out of range");
  if (err != std::errc() || end != text.data() + text.size() || text.empty() || step < 0)
    throw Error(path + ": metadata 'step' is \"" + text + "\", expected a non-negative integer");
  return step;
}

void rename_counted(const std::string& from, const std::string& to) {
  fs::rename(from, to);
  note_file_operation();
}

void remove_counted(const std::string& path) {
  if (fs::remove(path)) note_file_operation();
}

}  // namespace

void save_checkpoint(const std::string& dir, Transformer& model, ParamStore& store,
                     AdamW& optimizer, const nlohmann::json& trainer_state) {
  const std::map<std::string, std::string> meta = {
      {"step", std::to_string(trainer_state.at("step").get<int64_t>())}, {"format", "pt"}};
  // The config is the run's for its whole life: written with the first checkpoint only.
  if (!fs::exists(dir + "/config.json")) save_model_config(dir, model.config());
  write_safetensors(dir + "/model.safetensors.next", model_tensors(model, store), meta);
  write_safetensors(dir + "/optimizer.safetensors.next", optimizer_tensors(store, optimizer), meta);
  write_file_atomic(dir + "/trainer_state.json", trainer_state.dump(2) + "\n");  // commit
  for (const char* name : kTensorFiles)
    rename_counted(dir + "/" + name + ".next", dir + "/" + name);
}

nlohmann::json recover_checkpoint(const std::string& dir, bool needs_optimizer) {
  const std::string state_path = dir + "/trainer_state.json";
  if (!fs::exists(state_path))
    throw Error("'" + dir + "' holds no checkpoint (no trainer_state.json)");
  nlohmann::json state = read_json_file(state_path, "trainer state");
  if (!state.contains("step") || !state["step"].is_number_integer())
    throw Error(state_path + ": no integer 'step'");
  const int64_t step = state["step"];
  // Temporaries of writes that never committed.
  for (const std::string& folder : {dir, dir + "/data"})
    if (fs::is_directory(folder))
      for (const auto& entry : fs::directory_iterator(folder))
        if (entry.path().extension() == ".tmp") remove_counted(entry.path().string());
  for (const char* name : kTensorFiles) {
    const std::string path = dir + "/" + name, next = path + ".next";
    if (fs::exists(next)) {
      // Killed mid-save: the .next file belongs to the committed step (finish the rename)
      // or to a save that never committed (drop it).
      int64_t next_step = -1;
      try {
        next_step = step_of(read_safetensors(next), next);
      } catch (const Error&) {
      }
      if (next_step == step)
        rename_counted(next, path);
      else
        remove_counted(next);
    }
    // Inference reads the model alone: a folder shipped without its optimizer state still runs.
    const bool needed = needs_optimizer || std::string_view(name) == "model.safetensors";
    if (needed && !fs::exists(path)) throw Error("checkpoint '" + dir + "' lacks " + name);
  }
  return state;
}

void recover_for_reading(const std::string& dir) {
  if (!holds_checkpoint(dir)) return;
  if (auto lock = RunLock::try_acquire(dir)) recover_checkpoint(dir, /*needs_optimizer=*/false);
}

void load_checkpoint(const std::string& dir, int64_t step, Transformer& model, ParamStore& store,
                     AdamW& optimizer) {
  const std::string model_path = dir + "/model.safetensors";
  const SafetensorsFile weights = read_safetensors(model_path);
  if (step_of(weights, model_path) != step)
    throw Error(model_path + " is from another step than trainer_state.json");
  if (const int64_t layers = load_model_tensors(model, store, weights, model_path,
                                                /*allow_missing_thresholds=*/true))
    std::fprintf(stderr,
                 "resume: %s has no expert-choice selection thresholds for %lld layer(s) (an older "
                 "run); they are estimated on the first training steps\n",
                 model_path.c_str(), static_cast<long long>(layers));

  const std::string opt_path = dir + "/optimizer.safetensors";
  const SafetensorsFile moments = read_safetensors(opt_path);
  if (step_of(moments, opt_path) != step)
    throw Error(opt_path + " is from another step than trainer_state.json");
  for (const auto& e : store.entries())
    for (auto [suffix, moment] : moment_tensors(optimizer)) {
      if (!moments.has(e.name + suffix))
        throw Error(opt_path + ": missing tensor '" + e.name + suffix + "'");
      const Tensor& t = moments.at(e.name + suffix);
      if (t.shape() != e.shape)
        throw Error(opt_path + ": tensor '" + e.name + suffix + "' has shape " +
                    shape_str(t.shape()) + ", expected " + shape_str(e.shape));
      std::copy_n(t.data(), e.ref.numel, moment->data() + e.ref.offset);
    }
  optimizer.set_steps(step);
}

namespace {

constexpr const char* kKeptFolder = "checkpoints";
constexpr std::string_view kKeptPrefix = "step-";

std::string kept_checkpoint_dir(const std::string& dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%06lld", static_cast<long long>(step));
  return dir + "/" + kKeptFolder + "/" + name;
}

// Makes a rename in `folder` durable.
void sync_folder(const std::string& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void keep_checkpoint(const std::string& dir, int64_t step, Transformer& model, ParamStore& store) {
  const std::string parent = dir + "/" + kKeptFolder;
  if (fs::create_directory(parent)) note_file_operation();
  const std::string final_dir = kept_checkpoint_dir(dir, step), tmp = final_dir + ".tmp";
  if (fs::remove_all(tmp) > 0) note_file_operation();
  fs::create_directory(tmp);
  note_file_operation();
  save_model_config(tmp, model.config());
  write_safetensors(tmp + "/model.safetensors", model_tensors(model, store),
                    {{"step", std::to_string(step)}, {"format", "pt"}});
  if (fs::remove_all(final_dir) > 0) note_file_operation();
  rename_counted(tmp, final_dir);
  sync_folder(parent);
}

std::vector<std::pair<int64_t, std::string>> kept_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  const std::string parent = dir + "/" + kKeptFolder;
  if (!fs::is_directory(parent)) return out;
  for (const auto& entry : fs::directory_iterator(parent)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !name.starts_with(kKeptPrefix)) continue;
    int64_t step = -1;
    const char* first = name.data() + kKeptPrefix.size();
    const auto [end, err] = std::from_chars(first, name.data() + name.size(), step);
    if (err != std::errc() || end != name.data() + name.size() || step < 0) continue;  // .tmp
    if (fs::exists(entry.path() / "model.safetensors") && fs::exists(entry.path() / "config.json"))
      out.emplace_back(step, entry.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace moe
