// publish() and its callers (StagedDirectory, write_file_atomically,
// write_synced_file) when a rename or an fsync fails: each fallback path, the
// error it throws, and what it leaves on disk. The failures are made on
// purpose through the file-operation seam of io/file_ops.h.
#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "io/atomic_file.h"
#include "io/file_ops.h"
#include "test_util.h"

namespace lorakeep {
namespace {

using Catch::Matchers::Contains;
namespace fs = boost::filesystem;

// The real file operations, logged, except those a test makes fail: each
// hook returns 0 to let a call through, or the errno to fail it with.
class FaultyFileOps : public detail::FileOps {
 public:
  using PathsHook = std::function<int(const std::string& from, const std::string& to)>;
  using PathHook = std::function<int(const std::string& path)>;

  PathsHook on_rename, on_exchange, on_rename_noreplace;
  PathHook on_fsync;  // given the path the descriptor was opened with ("?" if unknown)

  // "rename <from> <to>", "exchange <a> <b>", "rename_noreplace <from> <to>",
  // "fsync <path>", in the order of the calls.
  std::vector<std::string> calls;

  // How many calls of `op` ("rename", "exchange", ...) were made.
  int count(const std::string& op) const {
    int n = 0;
    for (const std::string& c : calls) n += c.compare(0, op.size() + 1, op + " ") == 0 ? 1 : 0;
    return n;
  }

  int create(const std::string& path) override { return remember(FileOps::create(path), path); }
  int open_for_sync(const std::string& path) override { return remember(FileOps::open_for_sync(path), path); }

  int close(int fd) override {
    paths_.erase(fd);
    return FileOps::close(fd);
  }

  int fsync(int fd) override {
    const auto it = paths_.find(fd);
    const std::string path = it == paths_.end() ? "?" : it->second;
    calls.push_back("fsync " + path);
    if (on_fsync) {
      if (const int e = on_fsync(path)) return fail(e);
    }
    return FileOps::fsync(fd);
  }

  int rename(const std::string& from, const std::string& to) override {
    if (const int e = check("rename", on_rename, from, to)) return fail(e);
    return FileOps::rename(from, to);
  }

  int exchange(const std::string& a, const std::string& b) override {
    if (const int e = check("exchange", on_exchange, a, b)) return fail(e);
    return FileOps::exchange(a, b);
  }

  int rename_noreplace(const std::string& from, const std::string& to) override {
    if (const int e = check("rename_noreplace", on_rename_noreplace, from, to)) return fail(e);
    return FileOps::rename_noreplace(from, to);
  }

 private:
  static int fail(int err) {
    errno = err;
    return -1;
  }

  int remember(int fd, const std::string& path) {
    if (fd >= 0) paths_[fd] = path;
    return fd;
  }

  int check(const std::string& op, const PathsHook& hook, const std::string& a, const std::string& b) {
    calls.push_back(op + " " + a + " " + b);
    return hook ? hook(a, b) : 0;
  }

  std::map<int, std::string> paths_;  // open descriptor -> the path it was opened with
};

// The names in `dir`.
std::set<std::string> entries(const std::string& dir) {
  std::set<std::string> names;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// Makes the directory `dir` holding old.txt = "old": the earlier version.
void make_old_dir(const std::string& dir) {
  fs::create_directory(dir);
  test::write_file(dir + "/old.txt", "old");
}

// A staged directory for `final_path` holding new.txt = "new", synced.
detail::StagedDirectory staged_new(const std::string& final_path) {
  detail::StagedDirectory staged(final_path);
  detail::write_synced_file(staged.path() + "/new.txt", "new");
  return staged;
}

// `dir` holds the earlier version only, whole.
void check_old_dir(const std::string& dir) {
  CHECK(test::read_file(dir + "/old.txt") == "old");
  CHECK_FALSE(fs::exists(dir + "/new.txt"));
}

// `dir` holds the new version only, whole.
void check_new_dir(const std::string& dir) {
  CHECK(test::read_file(dir + "/new.txt") == "new");
  CHECK_FALSE(fs::exists(dir + "/old.txt"));
}

void write_new(detail::WritableFile& f) { f.append("new", 3); }

}  // namespace

TEST_CASE("ScopedFileOps routes the file operations to a test's and restores the previous ones", "[io]") {
  test::TempDir dir;
  detail::FileOps& real = detail::file_ops();
  FaultyFileOps outer, inner;
  {
    detail::ScopedFileOps outer_scope(outer);
    CHECK(&detail::file_ops() == &outer);
    {
      detail::ScopedFileOps inner_scope(inner);
      CHECK(&detail::file_ops() == &inner);
    }
    CHECK(&detail::file_ops() == &outer);
    detail::write_file_atomically(dir / "f", write_new);
  }
  CHECK(&detail::file_ops() == &real);
  CHECK(test::read_file(dir / "f") == "new");
  // The temporary file synced, renamed into place, then the directory synced.
  REQUIRE(outer.calls.size() == 3);
  CHECK_THAT(outer.calls[0], Contains("fsync " + dir.path() + "/.f.tmp-"));
  CHECK_THAT(outer.calls[1], Contains("rename " + dir.path() + "/.f.tmp-") && Contains(" " + (dir / "f")));
  CHECK(outer.calls[2] == "fsync " + dir.path());
  CHECK(inner.calls.empty());
}

TEST_CASE("a published directory replaces the earlier one and leaves nothing else", "[io]") {
  test::TempDir dir;
  const std::string out = dir / "out";
  make_old_dir(out);
  FaultyFileOps ops;
  {
    detail::StagedDirectory staged = staged_new(out);
    detail::ScopedFileOps scope(ops);
    staged.publish(/*replace=*/true);
  }
  check_new_dir(out);
  CHECK(entries(dir.path()) == std::set<std::string>{"out"});
  CHECK(ops.count("exchange") == 1);
}

TEST_CASE("a failed swap leaves the earlier directory whole and no temporary one", "[io]") {
  test::TempDir dir;
  const std::string out = dir / "out";
  make_old_dir(out);
  FaultyFileOps ops;
  ops.on_exchange = [](const std::string&, const std::string&) { return EIO; };
  {
    detail::StagedDirectory staged = staged_new(out);
    const std::string tmp = staged.path();
    detail::ScopedFileOps scope(ops);
    const Error e = test::capture_error([&] { staged.publish(/*replace=*/true); });
    CHECK(e.code() == ErrorCode::kIOError);
    CHECK_THAT(e.what(), Contains("cannot swap '" + tmp + "' into '" + out + "'") && Contains(std::strerror(EIO)));
    CHECK(ops.count("rename") == 0);                    // EIO is not "cannot swap here": no fallback
    CHECK(test::read_file(tmp + "/new.txt") == "new");  // still staged, until the destructor
  }
  check_old_dir(out);
  CHECK(entries(dir.path()) == std::set<std::string>{"out"});
}

TEST_CASE("without RENAME_EXCHANGE a directory is replaced by moving the earlier one aside", "[io]") {
  test::TempDir dir;
  const std::string out = dir / "out";
  make_old_dir(out);
  FaultyFileOps ops;
  ops.on_exchange = [](const std::string&, const std::string&) { return EINVAL; };
  std::string tmp;
  {
    detail::StagedDirectory staged = staged_new(out);
    tmp = staged.path();
    detail::ScopedFileOps scope(ops);
    staged.publish(/*replace=*/true);
  }
  check_new_dir(out);
  // Synced, swap refused with EINVAL, the earlier one moved aside, the new
  // one renamed into place, the parent synced; the earlier one then removed.
  REQUIRE(ops.calls.size() == 5);
  CHECK(ops.calls[1] == "exchange " + tmp + " " + out);
  CHECK_THAT(ops.calls[2], Contains("rename " + out + " " + dir.path() + "/.out.tmp-"));
  CHECK(ops.calls[3] == "rename " + tmp + " " + out);
  CHECK(entries(dir.path()) == std::set<std::string>{"out"});
}

TEST_CASE("without RENAME_EXCHANGE, a failure to move the earlier directory aside leaves it in place", "[io]") {
  test::TempDir dir;
  const std::string out = dir / "out";
  make_old_dir(out);
  FaultyFileOps ops;
  ops.on_exchange = [](const std::string&, const std::string&) { return EINVAL; };
  ops.on_rename = [&](const std::string& from, const std::string&) { return from == out ? EACCES : 0; };
  {
    detail::StagedDirectory staged = staged_new(out);
    detail::ScopedFileOps scope(ops);
    const Error e = test::capture_error([&] { staged.publish(/*replace=*/true); });
    CHECK(e.code() == ErrorCode::kIOError);
    CHECK_THAT(e.what(), Contains("cannot move '" + out + "' aside to replace it") && Contains(std::strerror(EACCES)));
    CHECK(ops.count("rename") == 1);
  }
  check_old_dir(out);
  CHECK(entries(dir.path()) == std::set<std::string>{"out"});
}

TEST_CASE("without RENAME_EXCHANGE, a failed rename into place puts the earlier directory back", "[io]") {
  test::TempDir dir;
  const std::string out = dir / "out";
  make_old_dir(out);
  FaultyFileOps ops;
  ops.on_exchange = [](const std::string&, const std::string&) { return EINVAL; };
  std::string tmp;
  ops.on_rename = [&](const std::string& from, const std::string&) { return from == tmp ? EIO : 0; };
  {
    detail::StagedDirectory staged = staged_new(out);
    tmp = staged.path();
    detail::ScopedFileOps scope(ops);
    const Error e = test::capture_error([&] { staged.publish(/*replace=*/true); });
    CHECK(e.code() == ErrorCode::kIOError);
    CHECK_THAT(e.what(), Contains("cannot rename '" + tmp + "' to '" + out + "'") && Contains(std::strerror(EIO)));
    // Aside, into place (failed), back.
    REQUIRE(ops.count("rename") == 3);
    CHECK_THAT(ops.calls.back(), Contains("rename " + dir.path() + "/.out.tmp-") && Contains(" " + out));
  }
  check_old_dir(out);
  CHECK(entries(dir.path()) == std::set<std::string>{"out"});
}

TEST_CASE("a failed sync of the staged directory publishes nothing", "[io]") {
  test::TempDir dir;
  const std::string out = dir / "out";
  make_old_dir(out);
  FaultyFileOps ops;
  std::string tmp;
  ops.on_fsync = [&](const std::string& path) { return path == tmp ? EIO : 0; };
  {
    detail::StagedDirectory staged = staged_new(out);
    tmp = staged.path();
    detail::ScopedFileOps scope(ops);
    const Error e = test::capture_error([&] { staged.publish(/*replace=*/true); });
    CHECK(e.code() == ErrorCode::kIOError);
    CHECK_THAT(e.what(), Contains("cannot sync '" + tmp + "'") && Contains(std::strerror(EIO)));
    CHECK(ops.count("exchange") == 0);
    CHECK(ops.count("rename") == 0);
  }
  check_old_dir(out);
  CHECK(entries(dir.path()) == std::set<std::string>{"out"});
}

TEST_CASE("a failed sync of the parent after the swap names the parent and keeps the new directory only", "[io]") {
  test::TempDir dir;
  const std::string out = dir / "out";
  make_old_dir(out);
  FaultyFileOps ops;
  ops.on_fsync = [&](const std::string& path) { return path == dir.path() ? EIO : 0; };
  {
    detail::StagedDirectory staged = staged_new(out);
    detail::ScopedFileOps scope(ops);
    const Error e = test::capture_error([&] { staged.publish(/*replace=*/true); });
    CHECK(e.code() == ErrorCode::kIOError);
    CHECK_THAT(e.what(), Contains("cannot sync '" + dir.path() + "'") && Contains(std::strerror(EIO)));
  }
  // The swap happened; the destructor removed the earlier directory, which
  // sat at the temporary name.
  check_new_dir(out);
  CHECK(entries(dir.path()) == std::set<std::string>{"out"});
}

TEST_CASE("publishing without replace refuses an existing directory and leaves it untouched", "[io]") {
  test::TempDir dir;
  const std::string out = dir / "out";
  make_old_dir(out);
  FaultyFileOps ops;
  {
    detail::StagedDirectory staged = staged_new(out);
    const std::string tmp = staged.path();
    detail::ScopedFileOps scope(ops);
    const Error e = test::capture_error([&] { staged.publish(/*replace=*/false); });
    CHECK(e.code() == ErrorCode::kIOError);
    CHECK_THAT(e.what(), Contains("cannot rename '" + tmp + "' to '" + out + "'") && Contains(std::strerror(EEXIST)));
  }
  check_old_dir(out);
  CHECK(entries(dir.path()) == std::set<std::string>{"out"});
}

TEST_CASE("without RENAME_NOREPLACE, publishing checks for the final name, then renames", "[io]") {
  test::TempDir dir;
  const std::string out = dir / "out";
  FaultyFileOps ops;
  ops.on_rename_noreplace = [](const std::string&, const std::string&) { return EINVAL; };
  SECTION("the final name is free: published") {
    {
      detail::StagedDirectory staged = staged_new(out);
      const std::string tmp = staged.path();
      detail::ScopedFileOps scope(ops);
      staged.publish(/*replace=*/false);
      // Synced, refused with EINVAL, renamed, the parent synced.
      REQUIRE(ops.calls.size() == 4);
      CHECK(ops.calls[1] == "rename_noreplace " + tmp + " " + out);
      CHECK(ops.calls[2] == "rename " + tmp + " " + out);
      CHECK(ops.calls[3] == "fsync " + dir.path());
    }
    check_new_dir(out);
    CHECK(entries(dir.path()) == std::set<std::string>{"out"});
  }
  SECTION("the final name is taken: refused before any rename") {
    make_old_dir(out);
    {
      detail::StagedDirectory staged = staged_new(out);
      const std::string tmp = staged.path();
      detail::ScopedFileOps scope(ops);
      const Error e = test::capture_error([&] { staged.publish(/*replace=*/false); });
      CHECK(e.code() == ErrorCode::kIOError);
      CHECK_THAT(e.what(), Contains("cannot rename '" + tmp + "' to '" + out + "'") && Contains(std::strerror(EEXIST)));
      CHECK(ops.count("rename") == 0);
    }
    check_old_dir(out);
    CHECK(entries(dir.path()) == std::set<std::string>{"out"});
  }
}

TEST_CASE("a file written atomically keeps its earlier contents when the rename fails", "[io]") {
  test::TempDir dir;
  const std::string f = dir / "f";
  test::write_file(f, "old");
  FaultyFileOps ops;
  ops.on_rename = [&](const std::string&, const std::string& to) { return to == f ? EIO : 0; };
  detail::ScopedFileOps scope(ops);
  const Error e = test::capture_error([&] { detail::write_file_atomically(f, write_new); });
  CHECK(e.code() == ErrorCode::kIOError);
  CHECK_THAT(e.what(), Contains("to '" + f + "'") && Contains(std::strerror(EIO)));
  CHECK(ops.count("rename") == 1);
  CHECK(test::read_file(f) == "old");
  CHECK(entries(dir.path()) == std::set<std::string>{"f"});  // the temporary file removed
}

TEST_CASE("a file written atomically keeps its earlier contents when its sync fails", "[io]") {
  test::TempDir dir;
  const std::string f = dir / "f";
  test::write_file(f, "old");
  const std::string tmp_prefix = dir / ".f.tmp-";
  FaultyFileOps ops;
  ops.on_fsync = [&](const std::string& path) { return path.compare(0, tmp_prefix.size(), tmp_prefix) == 0 ? EIO : 0; };
  detail::ScopedFileOps scope(ops);
  const Error e = test::capture_error([&] { detail::write_file_atomically(f, write_new); });
  CHECK(e.code() == ErrorCode::kIOError);
  CHECK_THAT(e.what(), Contains("cannot sync '" + tmp_prefix) && Contains(std::strerror(EIO)));
  CHECK(ops.count("rename") == 0);
  CHECK(test::read_file(f) == "old");
  CHECK(entries(dir.path()) == std::set<std::string>{"f"});  // the temporary file removed
}

TEST_CASE("a file written atomically is whole when the directory's sync fails after the rename", "[io]") {
  test::TempDir dir;
  const std::string f = dir / "f";
  test::write_file(f, "old");
  FaultyFileOps ops;
  ops.on_fsync = [&](const std::string& path) { return path == dir.path() ? EIO : 0; };
  detail::ScopedFileOps scope(ops);
  const Error e = test::capture_error([&] { detail::write_file_atomically(f, write_new); });
  CHECK(e.code() == ErrorCode::kIOError);
  CHECK_THAT(e.what(), Contains("cannot sync '" + dir.path() + "'") && Contains(std::strerror(EIO)));
  // The rename was done before the sync failed: a reader sees one version
  // whole, never a mix, and no temporary file is left.
  const std::string now = test::read_file(f);
  CHECK((now == "old" || now == "new"));
  CHECK(entries(dir.path()) == std::set<std::string>{"f"});
}

TEST_CASE("a failed sync of a staged file leaves neither the staged nor the final directory", "[io]") {
  test::TempDir dir;
  const std::string out = dir / "out";
  FaultyFileOps ops;
  std::string file;
  ops.on_fsync = [&](const std::string& path) { return path == file ? EIO : 0; };
  {
    detail::StagedDirectory staged(out);
    file = staged.path() + "/a.txt";
    detail::ScopedFileOps scope(ops);
    const Error e = test::capture_error([&] { detail::write_synced_file(file, "bytes"); });
    CHECK(e.code() == ErrorCode::kIOError);
    CHECK_THAT(e.what(), Contains("cannot sync '" + file + "'") && Contains(std::strerror(EIO)));
    CHECK(test::read_file(file) == "bytes");  // written, not synced, until the destructor
  }
  CHECK_FALSE(fs::exists(out));
  CHECK(entries(dir.path()).empty());
}

}  // namespace lorakeep
