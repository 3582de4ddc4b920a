#pragma once
// The HTML report of a run (`moe report`): one self-contained page (inline CSS and SVG, no
// script, nothing fetched) with the loss curves of the run and the runs compared with it,
// the expert load over training (from metrics.jsonl), and the evaluation's figures (load,
// specialization, token passages coloured by expert, routing consistency) from a
// `moe eval --json` object. A section whose data is absent is replaced by a one-line note.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/param_count.h"
#include "run/training_record.h"

namespace moe {

// What the report reads from one run folder.
struct RunData {
  std::string dir;   // as given
  std::string name;  // the folder's last component
  ModelConfig config;
  ParamCount params;        // at the config's context
  TrainingRecord training;  // metrics.jsonl, read as moe eval reads it
};

// Reads config.json and metrics.jsonl of `dir`; Error when either is missing or holds nothing
// usable.
RunData load_run_data(const std::string& dir);

// Error unless `other` was trained with the same tokenizer as `run` (same vocab_size and the
// same pieces in tokenizer.model): losses over different vocabularies do not compare.
void check_same_vocabulary(const RunData& run, const RunData& other);

struct ReportInputs {
  RunData run;
  std::vector<RunData> compare;  // lined up with `run` in the loss and compute charts
  nlohmann::json eval;           // `moe eval --json` of `run`; null: its sections are omitted
};

// The whole HTML page. Throws Error when `eval` has a field of the wrong type.
std::string render_report(const ReportInputs& inputs);

}  // namespace moe
