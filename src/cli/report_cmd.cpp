#include "cli/report_cmd.h"

#include <cstdio>

#include "analysis/eval.h"
#include "analysis/report.h"
#include "model/config.h"
#include "tensor/atomic_file.h"
#include "tensor/error.h"

namespace moe::cli {

CLI::App* add_report_command(CLI::App& app, ReportCommand& c) {
  CLI::App* cmd =
      app.add_subcommand("report",
                         "Write one self-contained HTML page of a run's loss, expert load, "
                         "specialization and routing consistency, lined up with --compare runs");
  cmd->add_option("-m,--model", c.model, "Run folder")->required();
  cmd->add_option("--compare", c.compare, "Runs to compare with (same tokenizer)");
  cmd->add_option("--out", c.out, "HTML file to write")->required();
  cmd->add_option("--eval", c.eval,
                  "A saved `moe eval --json` output (default: evaluate the run now)")
      ->check(CLI::ExistingFile);
  return cmd;
}

nlohmann::json eval_json_for(const std::string& run, const std::string& eval_file) {
  if (eval_file.empty()) {  // no saved evaluation: evaluate the run now, as `moe eval` does
    EvalOptions options;
    options.model = run;
    return eval_to_json(evaluate_run(options));
  }
  nlohmann::json eval = read_json_file(eval_file, "evaluation file");
  require_eval_of_run(eval, eval_file, run);
  return eval;
}

int run_report(const ReportCommand& c) {
  // Everything is read and checked before the page is written, so a refusal writes nothing.
  ReportInputs inputs;
  inputs.run = load_run_data(c.model);
  for (const std::string& dir : c.compare) {
    inputs.compare.push_back(load_run_data(dir));
    check_same_vocabulary(inputs.run, inputs.compare.back());
  }
  inputs.eval = eval_json_for(c.model, c.eval);
  const std::string html = render_report(inputs);
  write_file_atomic(c.out, html);
  std::printf("report: %s\n", c.out.c_str());
  return 0;
}

}  // namespace moe::cli
