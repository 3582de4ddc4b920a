// moe: train, run and inspect sparse Mixture-of-Experts transformers.
// Exit codes: 0 success, 2 bad input (moe::Error or bad arguments), 1 internal failure.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <new>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "cli/bench_decode.h"
#include "cli/bench_ep.h"
#include "cli/bench_layer.h"
#include "cli/bench_serve.h"
#include "cli/bench_train.h"
#include "cli/eval_cmd.h"
#include "cli/export_cmd.h"
#include "cli/generate_cmd.h"
#include "cli/logits_cmd.h"
#include "cli/params.h"
#include "cli/quantize_cmd.h"
#include "cli/report_cmd.h"
#include "cli/serve_cmd.h"
#include "cli/tokenize_cmd.h"
#include "cli/train_cmd.h"
#include "parallel/mpi_world.h"
#include "tensor/cpu.h"
#include "tensor/error.h"
#include "tensor/system_info.h"
#include "tensor/threads.h"

namespace {

// A bound as a person writes it: 1048576, 0.001, 1e+30.
std::string format_bound(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  return buf;
}

// The deepest command the parse reached: `moe bench layer ...` gives `layer`.
CLI::App* innermost_command(CLI::App& app) {
  CLI::App* current = &app;
  for (;;) {
    const auto chosen = current->get_subcommands([](CLI::App* s) { return s->parsed(); });
    if (chosen.empty()) return current;
    current = chosen.front();
  }
}

std::string command_path(const CLI::App* command) {
  std::string path = command->get_name();
  for (const CLI::App* p = command->get_parent(); p; p = p->get_parent())
    path = p->get_name() + (path.empty() ? "" : " " + path);
  return path;
}

// Whether `name` is an option of `command` (or of a command above it) checked by
// CLI::PositiveNumber, whose range prints as "0.000000 to <DBL_MAX>", like NonNegativeNumber's.
bool checked_positive(CLI::App* command, const std::string& name) {
  for (CLI::App* c = command; c; c = c->get_parent())
    if (CLI::Option* option = c->get_option_no_throw(name)) {
      try {
        return option->get_validator()->get_description() == "POSITIVE";
      } catch (const CLI::OptionNotFound&) {
        return false;
      }
    }
  return false;
}

// CLI11's range message prints its bounds with std::to_string, which spells out DBL_MAX in
// 300 digits: "--steps: Value 0 not in range 0.000000 to 1797...". Reworded as
// "--steps must be positive, got 0" or "--tokens must be in [1, 1048576], got 0".
std::string reword_range_error(CLI::App* command, const std::string& what) {
  static const std::regex range(R"(^(\S+): Value (.*) not in range (\S+) to (\S+)$)");
  std::smatch m;
  if (!std::regex_match(what, m, range)) return what;
  const std::string name = m[1];
  double lo = 0, hi = 0;
  try {
    lo = std::stod(m[3]);
    hi = std::stod(m[4]);
  } catch (const std::exception&) {
    return what;  // not the bounds this was written for: CLI11's own words then
  }
  std::string rule;
  if (hi < 1e300)
    rule = "must be in [" + format_bound(lo) + ", " + format_bound(hi) + "]";
  else if (checked_positive(command, name))
    rule = "must be positive";
  else
    rule = "must be >= " + format_bound(lo);
  return name + " " + rule + ", got " + m[2].str();
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// "unknown option '--stepz' (did you mean '--steps'?)": the nearest option of the command or
// of the commands above it, when it is a typo away.
std::string unknown_option(CLI::App* command, std::string word) {
  word = word.substr(0, word.find('='));
  std::string best;
  size_t best_distance = 3;  // two edits at most: further is not a typo
  for (const CLI::App* c = command; c; c = c->get_parent())
    for (const CLI::Option* option : c->get_options()) {
      std::vector<std::string> names;
      for (const std::string& n : option->get_lnames()) names.push_back("--" + n);
      for (const std::string& n : option->get_snames()) names.push_back("-" + n);
      for (const std::string& name : names)
        if (const size_t d = edit_distance(word, name); d < best_distance) {
          best_distance = d;
          best = name;
        }
    }
  return "unknown option '" + word + "'" + (best.empty() ? "" : " (did you mean '" + best + "'?)");
}

// "--steps must be an integer, got '1e3'" for CLI11's "Could not convert: --steps = 1e3".
std::string reword_conversion_error(CLI::App* command, const std::string& what) {
  static const std::regex conversion(R"(^Could not convert: (\S+) = (.*)$)");
  std::smatch m;
  if (!std::regex_match(what, m, conversion)) return what;
  const std::string name = m[1];
  std::string expected = "a value of another type";
  for (CLI::App* c = command; c; c = c->get_parent())
    if (const CLI::Option* option = c->get_option_no_throw(name)) {
      const std::string type = option->get_type_name();
      if (type.starts_with("INT") || type.starts_with("UINT"))
        expected = "an integer";
      else if (type.starts_with("FLOAT"))
        expected = "a number";
      break;
    }
  return name + " must be " + expected + ", got '" + m[2].str() + "'";
}

// One line for a parse error. A command that needs a subcommand and got an unknown word (or
// none) lists the ones it has.
std::string describe_parse_error(CLI::App& app, const CLI::ParseError& e) {
  CLI::App* command = innermost_command(app);
  const std::string path = command_path(command);
  // An option nobody takes is named first, wherever it stood (before the command too).
  for (const CLI::App* c = command; c; c = c->get_parent())
    for (const std::string& word : c->remaining())
      if (word.starts_with("-") && word.size() > 1 &&
          !std::isdigit(static_cast<unsigned char>(word[1])))
        return unknown_option(command, word) + " (see: " + path + " --help)";
  const auto children = command->get_subcommands([](CLI::App*) { return true; });
  if (!children.empty() && command->get_require_subcommand_min() > 0 &&
      command->get_subcommands().empty()) {
    std::string names;
    for (const CLI::App* c : children) names += (names.empty() ? "" : ", ") + c->get_name();
    // An unknown word falls through to the parent commands' leftovers.
    std::string given;
    for (const CLI::App* c = command; c && given.empty(); c = c->get_parent())
      for (const std::string& word : c->remaining())
        if (!word.starts_with("-")) {
          given = word;
          break;
        }
    const std::string where = command->get_parent() ? " for '" + path + "'" : "";
    if (!given.empty())
      return "unknown command '" + given + "'" + where + " (commands: " + names + ")";
    return "a command is required" + where + " (commands: " + names + ")";
  }
  std::string what = reword_conversion_error(command, reword_range_error(command, e.what()));
  for (char& c : what)
    if (c == '\n') c = ' ';
  return what + " (see: " + path + " --help)";
}

// Each command's help ends with examples and the options every command takes (which CLI11
// lists only under `moe --help`). docs/CLI.md is this help text, generated (scripts/cli_doc.sh).
void add_help_footers(CLI::App& app) {
  static const std::map<std::string, std::string> kExamples = {
      {"moe info", "moe info --json"},
      {"moe bench layer", "moe bench layer --case mixtral --tokens 256 2048 --json"},
      {"moe bench train", "moe bench train --config configs/d256-moe.json --batch-size 16"},
      {"moe bench decode",
       "moe bench decode --random mixtral-d1024 --dtype bf16\n"
       "  moe bench decode -m runs/default --n-prompt 32 --n-gen 64 --json"},
      {"moe bench serve",
       "moe bench serve --random mixtral-d1024 --clients 1,2,4,8,16\n"
       "  moe bench serve -m runs/default --n-prompt 32 --n-gen 64 --json"},
      {"moe bench ep", "mpirun -np 2 moe bench ep --tokens 1024"},
      {"moe params",
       "moe params --preset mixtral-8x7b\n"
       "  moe params --config configs/default.json --batch-size 32 --seq-len 128"},
      {"moe train",
       "moe train                                  # the default run, into runs/default\n"
       "  moe train --corpus notes.txt --vocab-size 2000 --steps 300 --out runs/notes\n"
       "  moe train --resume runs/notes --steps 600"},
      {"moe generate",
       "moe generate -m runs/default -p \"NAME\" -n 100 --temperature 0.7\n"
       "  moe generate -m hf/mixtral -f prompt.txt --expert-cache 4 --prefetch"},
      {"moe serve",
       "moe serve -m runs/default --port 8080 --parallel 4\n"
       "  moe serve -m hf/Mixtral-8x7B-Instruct --api-key KEY --expert-cache 4"},
      {"moe export", "moe export -m runs/default --out hf/default --dtype bf16"},
      {"moe quantize",
       "moe quantize -m hf/OLMoE-1B-7B -o olmoe-q8_0.gguf -t q8_0\n"
       "  moe quantize -m hf/Mixtral-8x7B -o mixtral-q4_k_m.gguf -t q4_k_m\n"
       "  llama-cli -m mixtral-q4_k_m.gguf -p \"Hello\"      # llama.cpp runs what it writes"},
      {"moe report", "moe report -m runs/default --compare runs/dense --out report.html"},
      {"moe eval",
       "moe eval -m runs/default\n"
       "  moe eval -m runs/default --text my_notes.txt --json > eval.json\n"
       "  moe eval -m runs/default -m runs/dense      # quality against active compute"},
      {"moe logits",
       "moe logits -m runs/default -p \"NAME\" -o last.f32\n"
       "  moe logits -m hf/mixtral --ids 1,415,2936 -o - | od -f | head"},
      {"moe tokenize",
       "moe tokenize -m runs/default -p \"NAME\"\n"
       "  moe logits -m runs/default --ids $(moe tokenize -m runs/default -p NAME --ids-only) -o "
       "-"},
  };
  const std::string global =
      "Every command also takes --threads N (OpenMP and OpenBLAS threads; default: MOE_THREADS "
      "or all\ncores), before or after the command; `moe --version` names the build.";
  std::vector<CLI::App*> pending = app.get_subcommands([](CLI::App*) { return true; });
  while (!pending.empty()) {
    CLI::App* command = pending.back();
    pending.pop_back();
    for (CLI::App* child : command->get_subcommands([](CLI::App*) { return true; }))
      pending.push_back(child);
    const auto examples = kExamples.find(command_path(command));
    std::string footer;
    if (examples != kExamples.end()) footer = "Examples:\n  " + examples->second + "\n\n";
    command->footer(footer + global);
  }
}

// OpenMP threads that wait at a barrier spin for about 3 ms (libgomp's default when
// OMP_WAIT_POLICY is unset) before they sleep. Alone that is free; beside another busy process
// the spinning threads burn the cores it needs (two `moe` at once made 58-84% of one alone
// together). A spin of 300 iterations, a few microseconds, keeps the speed alone and the fair
// share when shared (bench/RESULTS.md, "Sharing the cores"). libgomp reads its settings before
// main, so the program sets GOMP_SPINCOUNT and starts itself again, once; an OMP_WAIT_POLICY
// or GOMP_SPINCOUNT the user set is kept as given.
void restart_with_short_spin(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  setenv("GOMP_SPINCOUNT", "300", 1);
  execv("/proc/self/exe", argv);
  // Only on failure: libgomp's default stays in force, so the environment must not claim 300.
  unsetenv("GOMP_SPINCOUNT");
}

// Every command's options and its node in the parse: the options are bound by reference, so
// one Commands lives in main for the whole run; the command chosen is the node that parsed.
struct Commands {
  CLI::App* info = nullptr;
  bool info_json = false;
  CLI::App* bench_layer = nullptr;
  moe::cli::BenchLayerOptions bench_layer_options;
  CLI::App* bench_train = nullptr;
  moe::cli::BenchTrainOptions bench_train_options;
  CLI::App* bench_decode = nullptr;
  moe::cli::BenchDecodeCommand bench_decode_command;
  CLI::App* bench_serve = nullptr;
  moe::cli::BenchServeCommand bench_serve_command;
  CLI::App* bench_ep = nullptr;
  moe::cli::BenchEpOptions bench_ep_options;
  CLI::App* params = nullptr;
  moe::cli::ParamsOptions params_options;
  CLI::App* train = nullptr;
  moe::cli::TrainCommand train_command;
  CLI::App* generate = nullptr;
  moe::cli::GenerateCommand generate_command;
  CLI::App* export_model = nullptr;
  moe::cli::ExportCommand export_command;
  CLI::App* quantize = nullptr;
  moe::cli::QuantizeCommand quantize_command;
  CLI::App* report = nullptr;
  moe::cli::ReportCommand report_command;
  CLI::App* eval = nullptr;
  moe::cli::EvalCommand eval_command;
  CLI::App* logits = nullptr;
  moe::cli::LogitsCommand logits_command;
  CLI::App* tokenize = nullptr;
  moe::cli::TokenizeCommand tokenize_command;
  CLI::App* serve = nullptr;
  moe::cli::ServeCommand serve_command;
};

void add_global_options(CLI::App& app, int& threads) {
  app.name("moe");
  app.require_subcommand(1);
  // Subcommands inherit this: an option they do not know (--threads) goes to their parent, so
  // global options work after the subcommand too.
  app.fallthrough();
  app.set_version_flag("--version", moe::version_line());
  app.add_option("--threads", threads,
                 "Threads for OpenMP loops and OpenBLAS, before or after the command (default: "
                 "MOE_THREADS or all cores)")
      ->check(CLI::Range(1, 4096));
}

void add_info_command(CLI::App& app, Commands& c) {
  c.info = app.add_subcommand(
      "info", "What runs here: build, CPU, kernel set (MOE_KERNELS), OpenBLAS and threads");
  c.info->add_flag("--json", c.info_json, "Print JSON");
}

void add_bench_layer_command(CLI::App& bench, Commands& c) {
  moe::cli::BenchLayerOptions& o = c.bench_layer_options;
  c.bench_layer = bench.add_subcommand(
      "layer",
      "MoE layer forward and forward+backward tokens/s vs a dense SwiGLU of equal active FLOPs");
  c.bench_layer->add_option("--case", o.cases, "mixtral and/or deepseek")
      ->capture_default_str()
      ->check(CLI::IsMember({"mixtral", "deepseek"}));
  c.bench_layer->add_option("--tokens", o.tokens, "Token counts T")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  c.bench_layer->add_option("--min-seconds", o.min_seconds, "Minimum time per measurement")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 3600.0));
  c.bench_layer->add_flag("--json", o.json, "Print one JSON array instead of a table");
}

void add_bench_train_command(CLI::App& bench, Commands& c) {
  moe::cli::BenchTrainOptions& o = c.bench_train_options;
  c.bench_train = bench.add_subcommand(
      "train", "Training-step tokens/s and peak memory of a model on random tokens");
  c.bench_train
      ->add_option("--config", o.config, "Model config JSON (default: the built-in default model)")
      ->check(CLI::ExistingFile);
  c.bench_train->add_option("--batch-size", o.batch_size, "Sequences per step")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  c.bench_train->add_option("--seq-len", o.seq_len, "Tokens per sequence")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  c.bench_train->add_option("--steps", o.steps, "Timed steps (after 3 warm-up)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  c.bench_train->add_flag("--json", o.json, "Print JSON");
}

void add_bench_ep_command(CLI::App& bench, Commands& c) {
  moe::cli::BenchEpOptions& o = c.bench_ep_options;
  c.bench_ep = bench.add_subcommand(
      "ep", "Under mpirun -np P: one MoE layer with its experts spread over P ranks (all-to-all)");
  c.bench_ep->add_option("--config", o.config, "Model config JSON (default: the default model)")
      ->check(CLI::ExistingFile);
  c.bench_ep->add_option("--tokens", o.tokens, "Tokens per rank")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  c.bench_ep->add_option("--iterations", o.iterations, "Timed forward+backward calls")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  c.bench_ep->add_flag("--json", o.json, "Print JSON");
}

// `moe bench ...`, in the order its help lists them.
void add_bench_commands(CLI::App& app, Commands& c) {
  CLI::App* bench = app.add_subcommand("bench", "Measure throughput");
  bench->require_subcommand(1);
  add_bench_layer_command(*bench, c);
  add_bench_train_command(*bench, c);
  c.bench_decode = moe::cli::add_bench_decode_command(*bench, c.bench_decode_command);
  c.bench_serve = moe::cli::add_bench_serve_command(*bench, c.bench_serve_command);
  add_bench_ep_command(*bench, c);
}

void add_params_command(CLI::App& app, Commands& c) {
  moe::cli::ParamsOptions& o = c.params_options;
  c.params = app.add_subcommand(
      "params", "Total and active parameters and FLOPs per token (no option: every preset)");
  c.params->add_option("--preset", o.preset,
                       "mixtral-8x7b, mixtral-8x22b, deepseek-v2, deepseek-v3, qwen1.5-moe-a2.7b, "
                       "olmoe-1b-7b, grok-1, default, dense-baseline");
  c.params->add_option("--config", o.config, "A model config JSON file")->check(CLI::ExistingFile);
  c.params
      ->add_option("--context", o.context,
                   "Sequence length for attention FLOPs (default: the model's; moe eval and "
                   "report count at the run's --seq-len)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  c.params->add_flag("--json", o.json, "Print JSON");
  moe::cli::add_params_memory_options(*c.params, o);
}

// The commands that train, run, convert or inspect a model; each registers its own options.
void add_model_commands(CLI::App& app, Commands& c) {
  c.train = moe::cli::add_train_command(app, c.train_command);
  c.generate = moe::cli::add_generate_command(app, c.generate_command);
  c.export_model = moe::cli::add_export_command(app, c.export_command);
  c.quantize = moe::cli::add_quantize_command(app, c.quantize_command);
  c.report = moe::cli::add_report_command(app, c.report_command);
  c.eval = moe::cli::add_eval_command(app, c.eval_command);
  c.logits = moe::cli::add_logits_command(app, c.logits_command);
  c.tokenize = moe::cli::add_tokenize_command(app, c.tokenize_command);
  c.serve = moe::cli::add_serve_command(app, c.serve_command);
}

int print_info(bool json) {
  if (json)
    std::printf("%s\n", moe::system_info().dump(2).c_str());
  else
    std::printf("%s", moe::system_info_text().c_str());
  return 0;
}

// Runs the one command the parse chose; its exit code.
int run_chosen_command(Commands& c, moe::MpiWorld* mpi) {
  if (*c.info) return print_info(c.info_json);
  if (*c.bench_layer) return moe::cli::run_bench_layer(c.bench_layer_options);
  if (*c.bench_train) return moe::cli::run_bench_train(c.bench_train_options);
  if (*c.bench_decode) return moe::cli::run_bench_decode(c.bench_decode_command);
  if (*c.bench_serve) return moe::cli::run_bench_serve(c.bench_serve_command);
  if (*c.bench_ep) return moe::cli::run_bench_ep(c.bench_ep_options, mpi);
  if (*c.params) return moe::cli::run_params(c.params_options);
  if (*c.train) return moe::cli::run_train(c.train_command);
  if (*c.generate) return moe::cli::run_generate(c.generate_command);
  if (*c.export_model) return moe::cli::run_export(c.export_command);
  if (*c.quantize) return moe::cli::run_quantize(c.quantize_command);
  if (*c.report) return moe::cli::run_report(c.report_command);
  if (*c.eval) return moe::cli::run_eval(c.eval_command);
  if (*c.logits) return moe::cli::run_logits(c.logits_command);
  if (*c.tokenize) return moe::cli::run_tokenize(c.tokenize_command);
  if (*c.serve) return moe::cli::run_serve(c.serve_command);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  restart_with_short_spin(argv);
  // MPI only under mpirun: a process started alone is the single-process program of old.
  std::optional<moe::MpiWorld> world;
  if (moe::MpiWorld::launched_by_mpirun()) world.emplace(argc, argv);
  // Under P processes, errors every one meets alike are printed by rank 0 alone.
  const bool reporter = !world || world->rank() == 0;
  CLI::App app{"moe: sparse Mixture-of-Experts transformers: train, run, inspect"};
  int threads = 0;
  add_global_options(app, threads);
  Commands commands;
  add_info_command(app, commands);
  add_bench_commands(app, commands);
  add_params_command(app, commands);
  add_model_commands(app, commands);
  add_help_footers(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return reporter ? app.exit(e) : 0;  // --help
    if (reporter) std::fprintf(stderr, "moe: error: %s\n", describe_parse_error(app, e).c_str());
    return 2;
  }
  // An error one process met alone: the others would wait for it, so the whole job ends.
  auto end_job = [&](int code) {
    if (world && world->size() > 1) world->abort(code);
    return code;
  };
  const std::string rank_prefix =
      world && world->size() > 1 ? "rank " + std::to_string(world->rank()) + ": " : "";
  moe::MpiWorld* const mpi = world ? &*world : nullptr;
  commands.train_command.world = mpi;
  try {
    if (world && world->size() > 1) world->require_same_binary();
    moe::set_threads(threads);
    moe::kernel_set();  // a bad MOE_KERNELS is refused here, before any work
    return run_chosen_command(commands, mpi);
  } catch (const moe::SharedError& e) {
    if (reporter) std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 2;
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe: %serror: %s\n", rank_prefix.c_str(), e.what());
    return end_job(2);
  } catch (const std::bad_alloc&) {
    // Large tensors name themselves in a moe::Error; this is whatever else ran out.
    std::fprintf(stderr,
                 "moe: %serror: out of memory (an allocation failed; try a smaller model, "
                 "--batch-size, --seq-len or --threads)\n",
                 rank_prefix.c_str());
    return end_job(2);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe: %sinternal error: %s\n", rank_prefix.c_str(), e.what());
    return end_job(1);
  }
}
