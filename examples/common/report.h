// The run report of the examples: one self-contained HTML file (inline SVG,
// no network) in the run directory. Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "lorakeep/training_state.h"

namespace examples {

// A figure to compare the run with: a dashed horizontal line in the chart,
// labelled "<label> <value>", and a row of the "Reference figures" table.
struct Reference {
  std::string label;  // e.g. "base model eval_loss on the fine-tuning text"
  double value;
};

struct ReportData {
  std::string title;
  std::string config_path;
  std::vector<lorakeep::Metrics> log_history;  // training ("loss") and evaluation (`metric`) entries
  std::vector<std::int64_t> saved_steps;       // every checkpoint committed
  std::set<std::int64_t> kept_steps;           // still on disk at the end
  std::optional<std::int64_t> best_step;
  std::string metric = "eval_loss";  // the evaluation series charted and tabled
  bool greater_is_better = false;    // the best is the highest `metric`, else the lowest
  std::vector<Reference> references;
  std::string summary;  // plain text, shown under the checkpoint table
  // the reload
  std::uint64_t reload_bytes = 0;
  double reload_seconds = 0;
  std::int64_t reload_peak_device_bytes = 0;
  std::int64_t reload_peak_rss_bytes = 0;
  std::uint64_t naive_device_bytes = 0;
  std::string sample;  // generated text; its section is left out when empty
};

// Writes `path` atomically. Throws lorakeep::Error(kIOError).
void write_report(const std::string& path, const ReportData& data);

}  // namespace examples
