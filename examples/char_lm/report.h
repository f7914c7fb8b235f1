// The run report: one self-contained HTML file (inline SVG, no network) in
// the run directory.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "lorakeep/training_state.h"

namespace char_lm {

struct ReportData {
  std::string title;
  std::string config_path;
  std::vector<lorakeep::Metrics> log_history;  // training and evaluation entries
  std::vector<std::int64_t> saved_steps;       // every checkpoint committed
  std::set<std::int64_t> kept_steps;           // still on disk at the end
  std::optional<std::int64_t> best_step;
  std::string metric = "eval_loss";
  double base_eval_loss = 0;            // the base model on the fine-tuning text
  double base_eval_loss_base_text = 0;  // and on its own text
  double live_eval_loss = 0;            // after the reload
  // the reload
  std::uint64_t reload_bytes = 0;
  double reload_seconds = 0;
  std::int64_t reload_peak_device_bytes = 0;
  std::int64_t reload_peak_rss_bytes = 0;
  std::uint64_t naive_device_bytes = 0;
  std::string sample;  // generated text
};

// Writes `path` atomically. Throws lorakeep::Error(kIOError).
void write_report(const std::string& path, const ReportData& data);

}  // namespace char_lm
