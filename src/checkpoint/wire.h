// Private to checkpoint/: the byte strings ranks exchange through
// the store. A message is a sequence of fields: 64-bit integers and doubles
// (little-endian, as every rank of a job is), length-prefixed strings, and
// the two compound fields every message shares, a list of steps and a set of
// metrics (each encoded here only). Each message is a struct with an
// encode() and a decode() beside the code that sends it (collective.h,
// coordinated_save.cpp). Reading past the end or a malformed length throws
// Error(kCorruption).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "lorakeep/error.h"
#include "lorakeep/training_state.h"

namespace lorakeep::detail {

class WireWriter {
 public:
  WireWriter& i64(std::int64_t v) { return raw(&v, sizeof v); }
  WireWriter& f64(double v) { return raw(&v, sizeof v); }
  WireWriter& str(const std::string& s) {
    i64(static_cast<std::int64_t>(s.size()));
    bytes_ += s;
    return *this;
  }
  WireWriter& steps(const std::vector<std::int64_t>& steps) {
    i64(static_cast<std::int64_t>(steps.size()));
    for (const std::int64_t s : steps) i64(s);
    return *this;
  }
  WireWriter& metrics(const Metrics& metrics) {
    i64(static_cast<std::int64_t>(metrics.size()));
    for (const auto& [k, v] : metrics) str(k).f64(v);
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  WireWriter& raw(const void* p, std::size_t n) {
    bytes_.append(static_cast<const char*>(p), n);
    return *this;
  }
  std::string bytes_;
};

class WireReader {
 public:
  WireReader(std::string bytes, std::string what) : bytes_(std::move(bytes)), what_(std::move(what)) {}
  std::int64_t i64() {
    std::int64_t v;
    raw(&v, sizeof v);
    return v;
  }
  double f64() {
    double v;
    raw(&v, sizeof v);
    return v;
  }
  std::string str() {
    const std::int64_t n = i64();
    if (n < 0 || static_cast<std::uint64_t>(n) > bytes_.size() - pos_) fail();
    std::string s = bytes_.substr(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  std::vector<std::int64_t> steps() {
    std::vector<std::int64_t> out;
    for (std::int64_t n = count(); n > 0; --n) out.push_back(i64());
    return out;
  }
  Metrics metrics() {
    Metrics out;
    for (std::int64_t n = count(); n > 0; --n) {
      std::string k = str();
      out[std::move(k)] = f64();
    }
    return out;
  }
  // The whole message was read: a longer one is malformed too.
  void end() const {
    if (pos_ != bytes_.size()) fail();
  }

 private:
  void raw(void* p, std::size_t n) {
    if (bytes_.size() - pos_ < n) fail();
    std::memcpy(p, bytes_.data() + pos_, n);
    pos_ += n;
  }
  // An element count, at most the bytes left (each element takes one or more).
  std::int64_t count() {
    const std::int64_t n = i64();
    if (n < 0 || static_cast<std::uint64_t>(n) > bytes_.size() - pos_) fail();
    return n;
  }
  [[noreturn]] void fail() const {
    throw Error(ErrorCode::kCorruption, "a malformed message from another rank (" + what_ +
                                            ") (hint: are all ranks running the same lorakeep version?)");
  }
  std::string bytes_;
  std::string what_;
  std::size_t pos_ = 0;
};

}  // namespace lorakeep::detail
