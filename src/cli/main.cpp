// lorakeep: the command-line face of the library. See docs/ARCHITECTURE.md for commands
// and exit codes. No input may crash it: every failure becomes a message and
// exit code 1 (data) or 2 (usage).
#include <cstdio>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "lorakeep/error.h"
#include "lorakeep/logging.h"
#include "lorakeep/version.h"
#include "cli/commands.h"

namespace {

int report_failure(const lorakeep::cli::Command* cmd, const std::string& code, const std::string& message,
                   int exit_code = lorakeep::cli::kExitInvalid) {
  if (cmd != nullptr && cmd->json && *cmd->json) {
    nlohmann::json j;
    j["path"] = cmd->subject ? *cmd->subject : std::string();
    j["error"] = {{"code", code}, {"message", message}};
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cerr << "lorakeep: error: " << message << "\n";
  }
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lorakeep " LORAKEEP_VERSION ": memory-safe LoRA checkpoints for LibTorch"};
  app.require_subcommand(1);
  app.set_version_flag("--version", LORAKEEP_VERSION);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "log at debug level");
  std::vector<lorakeep::cli::Command> commands;
  lorakeep::cli::add_file_commands(app, commands);
  lorakeep::cli::add_merge_commands(app, commands);
  lorakeep::cli::add_run_commands(app, commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return lorakeep::cli::kExitUsage;
  }
  if (verbose) lorakeep::set_log_level(lorakeep::LogLevel::kDebug);

  const lorakeep::cli::Command* cmd = nullptr;
  for (const auto& c : commands) {
    if (c.app->parsed()) cmd = &c;
  }
  if (cmd == nullptr) return lorakeep::cli::kExitUsage;
  try {
    return cmd->run();
  } catch (const lorakeep::Error& e) {
    // A bad argument is a usage error; everything else is about the data.
    return report_failure(
        cmd, lorakeep::error_code_name(e.code()), e.what(),
        e.code() == lorakeep::ErrorCode::kInvalidArgument ? lorakeep::cli::kExitUsage : lorakeep::cli::kExitInvalid);
  } catch (const std::bad_alloc&) {
    return report_failure(cmd, "out_of_memory", "out of memory");
  } catch (const std::exception& e) {
    return report_failure(cmd, "internal", std::string("unexpected failure: ") + e.what());
  }
}
