// A child process for the tests that kill, restart and watch processes:
// started without a shell, its stdout read line by line through a pipe as it
// comes, killed if still running when the object dies.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

namespace lorakeep::test {

class ChildProcess {
 public:
  // Starts `argv` (argv[0] looked up in PATH) with exactly `env`, in `dir`
  // if not empty; its stderr into the same pipe if `with_stderr`, else this
  // process's.
  ChildProcess(const std::vector<std::string>& argv, const std::vector<std::string>& env, const std::string& dir = "",
               bool with_stderr = false);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Reads until a line for which `match` is true and returns it; "" if the
  // output ended first or nothing came for 60 s.
  std::string read_until(const std::function<bool(const std::string&)>& match);
  // The same for the first line that starts with `prefix`.
  std::string read_until(const std::string& prefix);

  void kill();  // SIGKILL
  pid_t pid() const { return pid_; }

  // Waits for the process to end (within `seconds`, else it is killed),
  // reading the rest of its output. Returns its exit code, or -signal.
  int finish(int seconds = 60);

  const std::vector<std::string>& lines() const { return lines_; }  // read so far
  std::string all_lines() const;

 private:
  enum class Read { kData, kEnd, kNothing };
  Read read_some(int timeout_ms);  // what comes within timeout_ms, into whole lines

  pid_t pid_ = -1;
  int fd_ = -1;  // the read end of its stdout
  std::string partial_;
  std::vector<std::string> lines_;
  std::size_t parsed_ = 0;  // lines read_until has looked at
};

// `extra`, then this process's environment (the first of a name wins).
std::vector<std::string> environment(const std::vector<std::string>& extra);

}  // namespace lorakeep::test
