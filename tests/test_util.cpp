#include "test_util.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <boost/filesystem.hpp>

#include "base/file_names.h"

namespace lorakeep::test {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string templ = std::string(base && *base ? base : "/tmp") + "/lorakeep-test-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = templ;
}

TempDir::~TempDir() {
  boost::system::error_code ec;
  boost::filesystem::remove_all(path_, ec);
}

namespace {
int skips = 0;
}  // namespace

void skip(const std::string& reason) {
  ++skips;
  WARN("SKIPPED: " << reason);
}

void skip_unless_ci(const std::string& reason) {
  const char* ci = std::getenv("CI");
  if (ci != nullptr && std::string(ci) == "true") FAIL(reason << " (CI=true: this test must run here)");
  skip(reason);
}

int skip_count() { return skips; }

bool have_torchrun() {
  const bool here = run_shell("command -v torchrun").exit_code == 0;
  if (!here) skip_unless_ci("no torchrun (Debian's python3-torch ships it)");
  return here;
}

bool can_unshare_mounts() {
  const ProcessResult probe = run_shell("unshare -m --propagation private true");
  if (probe.exit_code != 0) skip_unless_ci("cannot unshare the mount namespace here (" + probe.err + "): run as root");
  return probe.exit_code == 0;
}

std::string fixture(const std::string& relative) { return std::string(LORAKEEP_FIXTURES_DIR) + "/" + relative; }
std::string cli_path() { return LORAKEEP_CLI_PATH; }
std::string python_path() { return LORAKEEP_PYTHON; }
std::string python_script(const std::string& name) {
  return std::string(LORAKEEP_SOURCE_DIR) + "/tests/python/" + name;
}

ProcessResult run_process(const std::vector<std::string>& argv) {
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "cannot exec %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  ProcessResult result;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open = 2;
  char buf[65536];
  while (open > 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        (i == 0 ? result.out : result.err).append(buf, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open;
      }
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

ProcessResult run_python(const std::string& script, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"env", "HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", python_path(),
                                   python_script(script)};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv);
}

ProcessResult run_shell(const std::string& command) { return run_process({"/bin/bash", "-c", command}); }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

void flip_byte(const std::string& path, std::uint64_t offset, unsigned char mask) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  const int c = f.get();
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ mask));
  if (c == EOF || !f) throw std::runtime_error("cannot flip byte " + std::to_string(offset) + " of " + path);
}

std::set<std::int64_t> checkpoint_steps(const std::string& dir) {
  std::set<std::int64_t> out;
  for (const auto& e : boost::filesystem::directory_iterator(dir)) {
    if (auto step = detail::parse_checkpoint_dir_name(e.path().filename().string())) out.insert(*step);
  }
  return out;
}

std::string ddp_example_config(const std::string& dir, int max_steps) {
  std::string yaml = read_file(std::string(LORAKEEP_SOURCE_DIR) + "/configs/char_lm_ddp.yaml");
  for (const auto& [from, to] : {std::pair<std::string, std::string>{"base_steps: 300", "base_steps: 30"},
                                 {"max_steps: 150", "max_steps: " + std::to_string(max_steps)}}) {
    const std::size_t at = yaml.find(from);
    REQUIRE(at != std::string::npos);
    yaml.replace(at, from.size(), to);
  }
  const std::string path = dir + "/ddp.yaml";
  write_file(path, yaml);
  return path;
}

std::map<int, std::string> reloaded_adapters(const std::string& out) {
  std::map<int, std::string> by_rank;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    int rank = -1;
    char hex[17] = {};
    const std::size_t at = line.find("rank ");
    if (at != std::string::npos &&
        std::sscanf(line.c_str() + at, "rank %d: reloaded adapter xxh3 %16[0-9a-f]", &rank, hex) == 2) {
      by_rank[rank] = hex;
    }
  }
  return by_rank;
}

namespace {

// The names of the files in `dir`, sorted.
std::set<std::string> file_names(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : boost::filesystem::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// `text` with every occurrence of `from` replaced by `to`.
std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

std::string steps_text(const std::set<std::int64_t>& steps) {
  std::string out;
  for (std::int64_t s : steps) out += (out.empty() ? "" : " ") + std::to_string(s);
  return "{" + out + "}";
}

}  // namespace

std::string checkpoint_difference(const std::string& a, const std::string& b) {
  const std::set<std::int64_t> steps = checkpoint_steps(a);
  if (steps != checkpoint_steps(b)) {
    return "checkpoints " + steps_text(steps) + " in " + a + ", " + steps_text(checkpoint_steps(b)) + " in " + b;
  }
  for (std::int64_t step : steps) {
    const std::string name = detail::checkpoint_dir_name(step);
    const std::set<std::string> files = file_names(a + "/" + name);
    if (files != file_names(b + "/" + name)) return name + ": not the same files";
    for (const std::string& file : files) {
      // The manifest holds the optimizer archive's checksum, and LibTorch
      // 1.13's archive keys the state by parameter address: both differ
      // between processes with equal values.
      if (file == detail::kManifestFile || file == detail::kOptimizerFile) continue;
      std::string x = read_file(a + "/" + name + "/" + file), y = read_file(b + "/" + name + "/" + file);
      if (file == detail::kTrainerStateFile) {  // best_model_checkpoint names the run directory
        x = replace_all(x, a, "<run>");
        y = replace_all(y, b, "<run>");
      }
      if (x != y) return name + "/" + file + " differs";
    }
  }
  return "";
}

}  // namespace lorakeep::test
