// Private to the lorakeep tool: how subcommands plug into main().
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace lorakeep::cli {

// Exit codes (docs/ARCHITECTURE.md): 0 success, 1 invalid data or failed check, 2 usage.
inline constexpr int kExitOk = 0;
inline constexpr int kExitInvalid = 1;
inline constexpr int kExitUsage = 2;

struct Command {
  CLI::App* app;
  std::function<int()> run;              // returns the exit code; lorakeep::Error escapes to main
  std::shared_ptr<bool> json;            // if set and true: errors go to stdout as JSON
  std::shared_ptr<std::string> subject;  // the PATH argument, for JSON errors
};

// Each adds its subcommands to `app` and their actions to `commands`.
void add_file_commands(CLI::App& app, std::vector<Command>& commands);   // inspect, verify, convert
void add_run_commands(CLI::App& app, std::vector<Command>& commands);    // best, finalize
void add_merge_commands(CLI::App& app, std::vector<Command>& commands);  // merge-delta, make-delta, merge-lora

}  // namespace lorakeep::cli
