// Helpers shared by the tests: per-test temporary directories, fixture paths,
// child processes, and error capture.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "lorakeep/error.h"

namespace lorakeep::test {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it
// when the object dies. Each test makes its own: tests never share scratch.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// "<repo>/tests/fixtures/<relative>".
std::string fixture(const std::string& relative);

// Skips the running test case: prints `reason` and counts the skip; the
// caller returns right after, before any assertion. A run with skips and no
// failure exits kSkipExitCode, which ctest (SKIP_RETURN_CODE) reports as
// skipped, never as passed. For what a machine may lack, e.g. a GPU:
//   if (!torch::cuda::is_available()) { test::skip("no CUDA device"); return; }
void skip(const std::string& reason);

// As skip(), for what CI has and must run, e.g. root for mount(): under
// CI=true it fails the test instead.
void skip_unless_ci(const std::string& reason);

constexpr int kSkipExitCode = 77;

// Whether torchrun is here; if not, reports the test skipped (failed under
// CI) and the caller returns.
bool have_torchrun();

// Whether this process may give a child a mount namespace of its own
// (root); if not, reports the test skipped (failed under CI).
bool can_unshare_mounts();

// How many times skip() ran in this process.
int skip_count();

// The built lorakeep tool, and the Python of this build's peers (PEFT,
// transformers, safetensors: build/venv's old pins for LibTorch 1.13,
// build/torch-2.15's current ones for 2.15).
std::string cli_path();
std::string python_path();
// "<repo>/tests/python/<name>".
std::string python_script(const std::string& name);

struct ProcessResult {
  int exit_code = -1;  // -1 if killed by a signal
  int signal = 0;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs argv[0] with the given arguments (no shell), waits, collects output.
ProcessResult run_process(const std::vector<std::string>& argv);

// Runs tests/python/<script> with the peers' Python and `args`, offline
// (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1: no peer may reach the Hub).
ProcessResult run_python(const std::string& script, const std::vector<std::string>& args);

// Runs a shell command line with bash -c.
ProcessResult run_shell(const std::string& command);

// Runs `f`, which must throw lorakeep::Error, and returns the error.
template <class F>
Error capture_error(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  FAIL("expected a lorakeep::Error");
  return Error(ErrorCode::kInvalidArgument, "unreachable");
}

// Whether this build runs under AddressSanitizer, whose shadow memory and
// quarantine make resident-memory figures meaningless (RSS bounds are then
// reported, not asserted).
constexpr bool kUnderSanitizer =
#if defined(__SANITIZE_ADDRESS__)
    true;
#else
    false;
#endif

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& bytes);

// XORs the byte at `offset` of `path` with `mask`, in place.
void flip_byte(const std::string& path, std::uint64_t offset, unsigned char mask = 0x40);

// The steps of the checkpoint-<step> directories in `dir`.
std::set<std::int64_t> checkpoint_steps(const std::string& dir);

// configs/char_lm_ddp.yaml shortened for a test, written to <dir>/ddp.yaml
// (returned): a base model of 30 steps, `max_steps` of LoRA, checkpoints
// every 25.
std::string ddp_example_config(const std::string& dir, int max_steps = 50);

// The "rank R: reloaded adapter xxh3 HEX" lines the data-parallel example
// prints (after any prefix torchrun adds), by rank.
std::map<int, std::string> reloaded_adapters(const std::string& out);

// "" if the run directories `a` and `b` hold the same checkpoints with the
// same bytes (all files but the manifest and the optimizer archive, whose
// bytes depend on parameter addresses in LibTorch 1.13; trainer_state.json
// with each run directory's path replaced); else the first difference.
std::string checkpoint_difference(const std::string& a, const std::string& b);

}  // namespace lorakeep::test
