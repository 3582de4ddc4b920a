#pragma once
// `moe report`: a run's HTML report (analysis/report.h), optionally lined up with other runs.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moe::cli {

struct ReportCommand {
  std::string model;                 // run folder
  std::vector<std::string> compare;  // runs to line up with it
  std::string out;                   // the HTML file to write
  std::string eval;                  // a saved `moe eval --model RUN --json` output
};

CLI::App* add_report_command(CLI::App& app, ReportCommand& command);
int run_report(const ReportCommand& command);

// The evaluation the report renders for `run`: today the `--eval` file (`eval_file`); Error
// when none is given.
nlohmann::json eval_json_for(const std::string& run, const std::string& eval_file);

}  // namespace moe::cli
