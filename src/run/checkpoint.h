#pragma once
// Training checkpoints in a run folder:
//   config.json, model.safetensors, optimizer.safetensors, trainer_state.json, tokenizer.model
// Each file is written atomically. So that the set stays consistent when a run is killed
// mid-save, the two tensor files are first written as "<name>.next", then trainer_state.json
// (the commit point, naming the step), then the .next files are renamed into place.
// recover_checkpoint() finishes or undoes an interrupted save by comparing steps.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "model/transformer.h"
#include "nn/optimizer.h"
#include "tensor/params.h"

namespace moe {

void save_checkpoint(const std::string& dir, Transformer& model, ParamStore& store,
                     AdamW& optimizer, const nlohmann::json& trainer_state);

// Makes the folder's files consistent (see above) and returns trainer_state.json.
// Throws Error when the folder holds no checkpoint or an inconsistent one (a missing
// optimizer.safetensors counts only when `needs_optimizer`: training needs it, inference not).
nlohmann::json recover_checkpoint(const std::string& dir, bool needs_optimizer = true);

// What a reader (`moe generate`) runs before loading a run folder: when the folder holds a
// checkpoint and no writer holds its lock, the same recovery as --resume, under the lock.
// A folder being written is left alone: its model.safetensors is always one whole step's file.
// Read-only folders and folders that are not runs (no trainer_state.json) are left as they are.
void recover_for_reading(const std::string& dir);

// Loads model.safetensors and optimizer.safetensors of the checkpoint at `step` (as
// recover_checkpoint returned it) into an allocated model and optimizer; both files must be
// from that step.
void load_checkpoint(const std::string& dir, int64_t step, Transformer& model, ParamStore& store,
                     AdamW& optimizer);

// `moe train --keep-checkpoints`: a copy of the model at `step` in
// <dir>/checkpoints/step-NNNNNN/ (config.json and model.safetensors only, enough to load and
// route), for the analyses across training (routing saturation). Built in "step-NNNNNN.tmp"
// and renamed into place, so a kept folder is always whole; an existing copy of the same step
// (a resumed run redoing it, bit for bit) is replaced. Written before the run's own checkpoint
// of that step commits, so no kept step is ever missing after a kill and resume.
void keep_checkpoint(const std::string& dir, int64_t step, Transformer& model, ParamStore& store);

// The kept checkpoints of the run in `dir`: (step, folder), ascending by step.
std::vector<std::pair<int64_t, std::string>> kept_checkpoints(const std::string& dir);

}  // namespace moe
