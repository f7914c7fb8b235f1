#include "format/header.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "lorakeep/error.h"
#include "format/utf8.h"

namespace lorakeep::detail {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw Error(ErrorCode::kCorruption, "invalid safetensors file '" + path + "': " + why);
}

std::string shape_string(const std::vector<std::uint64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// One tensor entry as it appears in the JSON, before validation.
struct RawTensor {
  std::string name;
  std::optional<Dtype> dtype;
  bool has_shape = false;
  std::vector<std::uint64_t> shape;
  int offsets_seen = -1;  // -1: field absent
  std::uint64_t offsets[2] = {0, 0};
};

// SAX handler: builds the header without a DOM and checks every field's type
// as serde does for the reference's structs. nlohmann's SAX parser is
// iterative, so hostile nesting cannot overflow the stack.
class HeaderSax {
 public:
  using json = nlohmann::json;

  std::string error;
  bool has_metadata = false;
  std::map<std::string, std::string> metadata;
  std::vector<RawTensor> tensors;

  bool null() { return scalar("null"); }
  bool boolean(bool) { return scalar("a boolean"); }
  bool number_integer(json::number_integer_t) { return scalar("a negative integer"); }
  bool number_float(json::number_float_t, const json::string_t&) { return scalar("a non-integer number"); }
  bool binary(json::binary_t&) { return scalar("binary"); }
  bool number_unsigned(json::number_unsigned_t v) {
    switch (state_) {
      case State::kShape: tensors.back().shape.push_back(v); return true;
      case State::kOffsets: {
        RawTensor& t = tensors.back();
        if (t.offsets_seen >= 2) return set_error("tensor '" + t.name + "': data_offsets must have exactly 2 entries");
        t.offsets[t.offsets_seen++] = v;
        return true;
      }
      default: return scalar("an integer");
    }
  }
  bool string(json::string_t& v) {
    switch (state_) {
      case State::kMetadata: metadata[key_] = v; return true;
      case State::kTensor:
        if (field_ == Field::kDtype) {
          auto d = parse_dtype(v);
          if (!d) return set_error("tensor '" + tensors.back().name + "' has unknown dtype '" + v + "'");
          tensors.back().dtype = *d;
          return true;
        }
        return scalar("a string");
      default: return scalar("a string");
    }
  }
  bool start_object(std::size_t) {
    switch (state_) {
      case State::kTop: state_ = State::kRoot; return true;
      case State::kRoot:
        if (pending_metadata_) {
          state_ = State::kMetadata;
          return true;
        }
        state_ = State::kTensor;
        return true;
      case State::kTensor:
        if (field_ == Field::kOther) return begin_skip();
        return scalar("an object");
      case State::kSkip: ++skip_depth_; return true;
      default: return scalar("an object");
    }
  }
  bool start_array(std::size_t) {
    switch (state_) {
      case State::kTensor:
        if (field_ == Field::kShape) {
          state_ = State::kShape;
          return true;
        }
        if (field_ == Field::kOffsets) {
          tensors.back().offsets_seen = 0;
          state_ = State::kOffsets;
          return true;
        }
        if (field_ == Field::kOther) return begin_skip();
        return scalar("an array");
      case State::kSkip: ++skip_depth_; return true;
      case State::kTop: return set_error("the header must be a JSON object, not an array");
      default: return scalar("an array");
    }
  }
  bool end_array() {
    switch (state_) {
      case State::kShape: state_ = State::kTensor; return true;
      case State::kOffsets:
        if (tensors.back().offsets_seen != 2) {
          return set_error("tensor '" + tensors.back().name + "': data_offsets must have exactly 2 entries");
        }
        state_ = State::kTensor;
        return true;
      case State::kSkip: return end_skip();
      default: return true;
    }
  }
  bool end_object() {
    switch (state_) {
      case State::kMetadata: state_ = State::kRoot; return true;
      case State::kTensor: {
        const RawTensor& t = tensors.back();
        const char* missing = !t.dtype             ? "dtype"
                              : !t.has_shape       ? "shape"
                              : t.offsets_seen < 0 ? "data_offsets"
                                                   : nullptr;
        if (missing) return set_error("tensor '" + t.name + "' has no '" + missing + "' field");
        state_ = State::kRoot;
        return true;
      }
      case State::kSkip: return end_skip();
      case State::kRoot: state_ = State::kDone; return true;
      default: return true;
    }
  }
  bool key(json::string_t& k) {
    switch (state_) {
      case State::kRoot:
        if (k == "__metadata__") {
          if (has_metadata) return set_error("'__metadata__' appears twice");
          has_metadata = true;
          pending_metadata_ = true;
          return true;
        }
        pending_metadata_ = false;
        if (!names_.insert(k).second) {
          return set_error("tensor name '" + k +
                           "' appears twice (hint: the file was edited by hand or by a broken writer)");
        }
        tensors.push_back(RawTensor{});
        tensors.back().name = k;
        return true;
      case State::kMetadata:
        if (metadata.count(k)) return set_error("metadata key '" + k + "' appears twice");
        key_ = k;
        return true;
      case State::kTensor: {
        RawTensor& t = tensors.back();
        bool dup = false;
        if (k == "dtype") {
          field_ = Field::kDtype;
          dup = t.dtype.has_value();
        } else if (k == "shape") {
          field_ = Field::kShape;
          dup = t.has_shape;
          t.has_shape = true;
        } else if (k == "data_offsets") {
          field_ = Field::kOffsets;
          dup = t.offsets_seen >= 0;
        } else {
          field_ = Field::kOther;  // unknown fields are ignored, as by serde
        }
        if (dup) return set_error("tensor '" + t.name + "' has field '" + k + "' twice");
        return true;
      }
      default: return true;
    }
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) {
    if (error.empty()) error = std::string("the header is not valid JSON: ") + ex.what();
    return false;
  }

 private:
  enum class State { kTop, kRoot, kMetadata, kTensor, kShape, kOffsets, kSkip, kDone };
  enum class Field { kDtype, kShape, kOffsets, kOther };

  bool set_error(std::string why) {
    if (error.empty()) error = std::move(why);
    return false;
  }
  bool begin_skip() {
    state_ = State::kSkip;
    skip_depth_ = 1;
    return true;
  }
  bool end_skip() {
    if (--skip_depth_ == 0) state_ = State::kTensor;
    return true;
  }
  // A scalar value where the state says what is legal.
  bool scalar(const char* what) {
    switch (state_) {
      case State::kTop: return set_error(std::string("the header must be a JSON object, not ") + what);
      case State::kRoot:
        if (pending_metadata_) {
          if (std::strcmp(what, "null") == 0) return true;  // "__metadata__": null is accepted
          return set_error(std::string("'__metadata__' must be an object of strings, not ") + what);
        }
        return set_error("tensor '" + tensors.back().name + "' must be an object, not " + what);
      case State::kMetadata: return set_error("metadata value of key '" + key_ + "' must be a string, not " + what);
      case State::kTensor:
        if (field_ == Field::kOther) return true;
        return set_error("tensor '" + tensors.back().name + "' field '" +
                         (field_ == Field::kDtype   ? "dtype"
                          : field_ == Field::kShape ? "shape"
                                                    : "data_offsets") +
                         "' has the wrong type (" + what + ")");
      case State::kShape:
        return set_error("tensor '" + tensors.back().name + "' shape entries must be non-negative integers, not " +
                         what);
      case State::kOffsets:
        return set_error("tensor '" + tensors.back().name + "' data_offsets must be non-negative integers, not " +
                         what);
      case State::kSkip: return true;
      case State::kDone: return true;
    }
    return true;
  }

  State state_ = State::kTop;
  Field field_ = Field::kOther;
  bool pending_metadata_ = false;
  int skip_depth_ = 0;
  std::string key_;
  std::unordered_set<std::string> names_;
};

std::uint64_t read_le64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

bool checked_byte_size(Dtype dtype, const std::vector<std::uint64_t>& shape, std::uint64_t* bytes) {
  std::uint64_t n = 1;
  for (std::uint64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) return false;
  }
  std::uint64_t bits;
  if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(dtype_bits(dtype)), &bits)) return false;
  if (bits % 8 != 0) return false;
  *bytes = bits / 8;
  return true;
}

SafetensorsHeader parse_safetensors_header(const std::uint8_t* file, std::uint64_t file_size, const std::string& path) {
  if (file_size < 8) {
    fail(path, "the file is " + std::to_string(file_size) +
                   " bytes, too small for the 8-byte header length (header too small)");
  }
  const std::uint64_t n = read_le64(file);
  if (n > kMaxHeaderSize) {
    fail(path, "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderSize) +
                   " bytes (header too large; hint: not a safetensors file?)");
  }
  if (n > file_size - 8) {
    fail(path, "header length " + std::to_string(n) + " runs past the end of the " + std::to_string(file_size) +
                   "-byte file (invalid header length; hint: truncated download?)");
  }
  const std::uint8_t* json = file + 8;
  const std::size_t bad = find_invalid_utf8(json, n);
  if (bad != n) {
    fail(path, "the header is not valid UTF-8 at byte " + std::to_string(8 + bad) + " (invalid header)");
  }
  // nlohmann skips a UTF-8 byte order mark; the reference does not.
  if (n >= 3 && json[0] == 0xEF && json[1] == 0xBB && json[2] == 0xBF) {
    fail(path, "the header starts with a byte order mark, which is not JSON");
  }

  HeaderSax sax;
  const char* begin = reinterpret_cast<const char*>(json);
  const bool ok = nlohmann::json::sax_parse(begin, begin + n, &sax);
  if (!ok || !sax.error.empty()) {
    fail(path, sax.error.empty() ? std::string("the header is not valid JSON") : sax.error);
  }

  std::stable_sort(sax.tensors.begin(), sax.tensors.end(), [](const RawTensor& a, const RawTensor& b) {
    return a.offsets[0] != b.offsets[0] ? a.offsets[0] < b.offsets[0] : a.offsets[1] < b.offsets[1];
  });

  SafetensorsHeader h;
  h.header_size = n;
  h.has_metadata = sax.has_metadata;
  h.metadata = std::move(sax.metadata);
  h.tensors.reserve(sax.tensors.size());
  std::uint64_t start = 0;
  for (RawTensor& t : sax.tensors) {
    const std::uint64_t b = t.offsets[0], e = t.offsets[1];
    if (b != start || e < b) {
      fail(path, "tensor '" + t.name + "' has data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                     "] but the previous tensor ends at " + std::to_string(start) +
                     " (invalid offset: overlapping or missing bytes)");
    }
    start = e;
    std::uint64_t bytes;
    if (!checked_byte_size(*t.dtype, t.shape, &bytes)) {
      fail(path, "tensor '" + t.name + "' with shape " + shape_string(t.shape) + " of " +
                     std::string(dtype_name(*t.dtype)) +
                     " has no valid byte size (validation overflow, or a sub-byte dtype not ending on a byte)");
    }
    if (e - b != bytes) {
      fail(path, "tensor '" + t.name + "' spans " + std::to_string(e - b) + " bytes but shape " +
                     shape_string(t.shape) + " of " + std::string(dtype_name(*t.dtype)) + " needs " +
                     std::to_string(bytes) + " (invalid tensor info)");
    }
    TensorInfo info;
    info.name = std::move(t.name);
    info.dtype = *t.dtype;
    info.data_begin = b;
    info.data_end = e;
    h.tensors.push_back(std::move(info));
    h.tensors.back().shape.assign(t.shape.begin(), t.shape.end());  // range checked below
    for (std::uint64_t d : t.shape) {
      if (d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        throw Error(ErrorCode::kNotSupported, "safetensors file '" + path + "': tensor '" + h.tensors.back().name +
                                                  "' has dimension " + std::to_string(d) +
                                                  ", beyond what LibTorch can index");
      }
    }
  }
  h.data_size = file_size - 8 - n;
  if (start != h.data_size) {
    fail(path, "the tensors cover " + std::to_string(start) + " bytes of data but the file holds " +
                   std::to_string(h.data_size) + " (incomplete buffer; hint: truncated or padded file?)");
  }
  return h;
}

void append_json_string(std::string& out, const std::string& s) {
  static const char kHex[] = "0123456789abcdef";
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

HeaderLayout layout_safetensors_header(std::vector<TensorInfo> tensors,
                                       const std::map<std::string, std::string>& metadata) {
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.dtype != b.dtype) return a.dtype > b.dtype;
    return a.name < b.name;  // std::string compares bytes, as Rust's String does
  });
  std::unordered_set<std::string> seen;
  for (const TensorInfo& t : tensors) {
    if (!seen.insert(t.name).second) {
      throw Error(ErrorCode::kInvalidArgument, "tensor name '" + t.name + "' is given twice");
    }
  }
  HeaderLayout layout;
  std::string& out = layout.header;
  out += '{';
  bool first = true;
  if (!metadata.empty()) {
    out += "\"__metadata__\":{";
    for (auto it = metadata.begin(); it != metadata.end(); ++it) {
      if (it != metadata.begin()) out += ',';
      append_json_string(out, it->first);
      out += ':';
      append_json_string(out, it->second);
    }
    out += '}';
    first = false;
  }
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    TensorInfo& t = tensors[i];
    if (t.name == "__metadata__") {
      throw Error(ErrorCode::kInvalidArgument, "a tensor cannot be named '__metadata__' (reserved by safetensors)");
    }
    std::vector<std::uint64_t> shape;
    for (std::int64_t d : t.shape) {
      if (d < 0) throw Error(ErrorCode::kInvalidArgument, "tensor '" + t.name + "' has a negative dimension");
      shape.push_back(static_cast<std::uint64_t>(d));
    }
    std::uint64_t bytes;
    if (!checked_byte_size(t.dtype, shape, &bytes)) {
      throw Error(ErrorCode::kInvalidArgument, "tensor '" + t.name + "' has no valid byte size");
    }
    t.data_begin = offset;
    t.data_end = offset + bytes;
    offset += bytes;
    if (!first) out += ',';
    first = false;
    append_json_string(out, t.name);
    out += ":{\"dtype\":\"";
    out += dtype_name(t.dtype);
    out += "\",\"shape\":[";
    for (std::size_t k = 0; k < shape.size(); ++k) {
      if (k) out += ',';
      out += std::to_string(shape[k]);
    }
    out += "],\"data_offsets\":[";
    out += std::to_string(t.data_begin);
    out += ',';
    out += std::to_string(t.data_end);
    out += "]}";
  }
  out += '}';
  out.append((8 - out.size() % 8) % 8, ' ');
  layout.tensors = std::move(tensors);
  layout.data_size = offset;
  return layout;
}

}  // namespace lorakeep::detail
