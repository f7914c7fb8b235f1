// best, finalize: the end-of-training hook for shell pipelines. Read-only on
// the run directory (commits are atomic renames): safe while a run writes.
#include <cstdio>
#include <iostream>

#include <boost/filesystem.hpp>
#include <nlohmann/json.hpp>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "checkpoint/export.h"
#include "checkpoint/policy.h"
#include "checkpoint/run_dir.h"
#include "cli/commands.h"

namespace lorakeep::cli {
namespace {

namespace fs = boost::filesystem;

struct Best {
  detail::RunDirScan scan;
  const detail::ScannedCheckpoint* best = nullptr;
  std::string metric;
  bool greater = false;
};

// The best committed checkpoint, by the metric the run itself tracked (its
// newest manifest says which).
Best find_best(const std::string& run_dir) {
  Best b;
  b.scan = detail::scan_run_dir(run_dir);
  const auto valid = b.scan.valid();
  if (valid.empty()) {
    throw Error(ErrorCode::kNotFound, "'" + run_dir + "' holds no committed checkpoint");
  }
  b.metric = valid.back()->manifest->metric_for_best_model;
  b.greater = valid.back()->manifest->greater_is_better;
  std::vector<detail::CheckpointRecord> records;
  for (const auto* c : valid) {
    auto it = c->manifest->metrics.find(b.metric);
    records.push_back({c->step, it == c->manifest->metrics.end() ? std::nullopt : std::optional<double>(it->second)});
  }
  const auto ranked = detail::rank_by_metric(records, b.greater);
  if (ranked.empty()) {
    throw Error(ErrorCode::kNotFound, "no checkpoint in '" + run_dir + "' was evaluated on '" + b.metric + "'");
  }
  for (const auto* c : valid) {
    if (c->step == ranked.front()) b.best = c;
  }
  return b;
}

nlohmann::json metric_json(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

int run_best(const std::string& run_dir, bool json) {
  const Best b = find_best(run_dir);
  const double value = b.best->manifest->metrics.at(b.metric);
  if (json) {
    nlohmann::json j;
    j["run_dir"] = run_dir;
    j["metric"] = b.metric;
    j["greater_is_better"] = b.greater;
    j["best"] = {{"step", b.best->step},
                 {"path", b.best->path},
                 {"value", metric_json(value)},
                 {"epoch", b.best->manifest->epoch}};
    j["checkpoints"] = nlohmann::json::array();
    for (const auto& c : b.scan.checkpoints) {
      nlohmann::json row = {{"step", c.step}, {"path", c.path}, {"valid", c.manifest.has_value()}};
      if (c.manifest) {
        auto it = c.manifest->metrics.find(b.metric);
        row["value"] = it == c.manifest->metrics.end() ? nlohmann::json(nullptr) : metric_json(it->second);
      } else {
        row["problem"] = c.problem;
      }
      j["checkpoints"].push_back(std::move(row));
    }
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return kExitOk;
  }
  std::printf("%s\n", b.best->path.c_str());
  std::fprintf(stderr, "best of %zu checkpoints by %s (%s is better): step %lld, %s = %.6g\n", b.scan.valid().size(),
               b.metric.c_str(), b.greater ? "greater" : "smaller", static_cast<long long>(b.best->step),
               b.metric.c_str(), value);
  return kExitOk;
}

int run_finalize(const std::string& run_dir, std::string export_dir) {
  const Best b = find_best(run_dir);
  // Every file verified once: the exported ones as they are copied.
  const detail::CheckpointReader checkpoint(b.best->path);
  for (const auto& [name, entry] : checkpoint.manifest().files) {
    checkpoint.check(name, /*full=*/!detail::is_adapter_file(name));
  }
  if (export_dir.empty()) export_dir = (fs::path(run_dir) / "best_adapter").string();
  detail::export_adapter(checkpoint, export_dir);
  std::printf("%s\n", export_dir.c_str());
  std::fprintf(stderr, "verified %s (step %lld, %s = %.6g) and exported its adapter to %s\n", b.best->path.c_str(),
               static_cast<long long>(b.best->step), b.metric.c_str(), b.best->manifest->metrics.at(b.metric),
               export_dir.c_str());
  return kExitOk;
}

}  // namespace

void add_run_commands(CLI::App& app, std::vector<Command>& commands) {
  {
    auto* sub = app.add_subcommand("best", "print the best committed checkpoint of a run directory");
    auto dir = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    sub->add_option("RUN_DIR", *dir, "the run's output_dir")->required();
    sub->add_flag("--json", *json, "print JSON");
    commands.push_back({sub, [dir, json] { return run_best(*dir, *json); }, json, dir});
  }
  {
    auto* sub = app.add_subcommand("finalize", "verify the best checkpoint and export its adapter atomically");
    auto dir = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    sub->add_option("RUN_DIR", *dir, "the run's output_dir")->required();
    sub->add_option("--export", *out, "where the adapter goes (default RUN_DIR/best_adapter)");
    commands.push_back({sub, [dir, out] { return run_finalize(*dir, *out); }, nullptr, dir});
  }
}

}  // namespace lorakeep::cli
