#include "lorakeep/checkpoint_options.h"

#include "lorakeep/error.h"

namespace lorakeep {

std::string metric_key(const CheckpointOptions& o) {
  if (o.metric_for_best_model.empty()) return "";
  if (o.metric_for_best_model.compare(0, 5, "eval_") == 0) return o.metric_for_best_model;
  return "eval_" + o.metric_for_best_model;
}

bool greater_is_better(const CheckpointOptions& o) {
  if (o.greater_is_better) return *o.greater_is_better;
  const std::string& m = o.metric_for_best_model;
  return !(m.size() >= 4 && m.compare(m.size() - 4, 4, "loss") == 0);
}

ResumeFrom resume_from(const CheckpointOptions& o) {
  const std::string& r = o.resume_from_checkpoint;
  if (r == "auto" || r == "true") return ResumeFrom::kNewest;
  if (r == "none" || r == "false") return ResumeFrom::kNone;
  return ResumeFrom::kPath;
}

void validate(const CheckpointOptions& o) {
  auto fail = [](const std::string& field, const std::string& why) {
    throw Error(ErrorCode::kInvalidArgument, "checkpoint option '" + field + "' " + why);
  };
  if (o.output_dir.empty()) fail("output_dir", "is empty");
  if (o.save_total_limit < 0) fail("save_total_limit", "must not be negative");
  if (o.keep_best < 0) fail("keep_best", "must not be negative");
  if (o.chunk_bytes < 64) fail("chunk_bytes", "must be at least 64");
  if (o.resume_from_checkpoint.empty()) {
    fail("resume_from_checkpoint", "is empty (hint: auto, true, none, false or a checkpoint's path)");
  }
}

}  // namespace lorakeep
