#pragma once
// `moe export`: a trained run as a Hugging Face checkpoint folder (model/hf_export.h).
#include <CLI/CLI.hpp>
#include <string>

namespace moe::cli {

struct ExportCommand {
  std::string model;  // run folder
  std::string out;    // Hugging Face folder to write
  std::string dtype = "f32";
  bool dropless = false;
  bool force = false;
};

// Registers `export` and its options on `app`, bound to `command`.
CLI::App* add_export_command(CLI::App& app, ExportCommand& command);
int run_export(const ExportCommand& command);

}  // namespace moe::cli
