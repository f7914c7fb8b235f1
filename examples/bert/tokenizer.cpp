#include "tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "lorakeep/error.h"

namespace bert {
namespace {

using lorakeep::Error;
using lorakeep::ErrorCode;
using nlohmann::json;

struct CodeRange {
  char32_t first;
  char32_t last;
};
struct CodeMapping {
  char32_t code;
  unsigned offset;  // into the pool
  unsigned length;
};

#include "unicode_tables.inc"

template <std::size_t N>
bool in(const CodeRange (&table)[N], char32_t c) {
  const CodeRange* end = table + N;
  const CodeRange* r = std::upper_bound(table, end, c, [](char32_t v, const CodeRange& x) { return v < x.first; });
  return r != table && c <= (r - 1)->last;
}

// The replacement of `c` in `map` (pool entries), or nullptr.
template <std::size_t N>
const CodeMapping* find(const CodeMapping (&map)[N], char32_t c) {
  const CodeMapping* end = map + N;
  const CodeMapping* m = std::lower_bound(map, end, c, [](const CodeMapping& x, char32_t v) { return x.code < v; });
  return m != end && m->code == c ? m : nullptr;
}

// BERT's list, also tokenizers' (the generator checks it against the probe).
bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

constexpr char32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;

// Decodes UTF-8; throws naming the byte offset of the first invalid sequence.
std::u32string decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    char32_t c = 0;
    if (b < 0x80) {
      n = 1, c = b;
    } else if (b >= 0xC2 && b <= 0xDF) {
      n = 2, c = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      n = 3, c = b & 0x0F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      n = 4, c = b & 0x07;
    }
    bool ok = n != 0 && i + n <= s.size();
    for (std::size_t k = 1; ok && k < n; ++k) {
      const auto t = static_cast<unsigned char>(s[i + k]);
      ok = (t & 0xC0) == 0x80;
      c = (c << 6) | (t & 0x3F);
    }
    // Overlong three- and four-byte forms, surrogates, beyond U+10FFFF.
    if (ok && ((n == 3 && (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF))) || (n == 4 && (c < 0x10000 || c > 0x10FFFF))))
      ok = false;
    if (!ok) {
      throw Error(ErrorCode::kInvalidArgument,
                  "tokenizer input is not valid UTF-8 at byte " + std::to_string(i) + " (hint: decode the text first)");
    }
    out.push_back(c);
    i += n;
  }
  return out;
}

void append_utf8(std::string* out, char32_t c) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode_utf8(const std::u32string& s, std::size_t begin = 0, std::size_t end = std::u32string::npos) {
  std::string out;
  end = std::min(end, s.size());
  for (std::size_t i = begin; i < end; ++i) append_utf8(&out, s[i]);
  return out;
}

// Reading the file: every error names the file and the key.
class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}

  [[noreturn]] void fail(ErrorCode code, const std::string& key, const std::string& what,
                         const std::string& hint) const {
    std::string m = "'" + path_ + "': ";
    if (!key.empty()) m += "key '" + key + "' ";
    m += what;
    if (!hint.empty()) m += " (hint: " + hint + ")";
    throw Error(code, m);
  }

  const json& member(const json& obj, const std::string& parent, const std::string& name) const {
    auto it = obj.find(name);
    if (it == obj.end()) {
      fail(ErrorCode::kCorruption, Reader::key(parent, name), "is missing",
           "a tokenizer.json saved by Hugging Face tokenizers for a BERT model has it");
    }
    return *it;
  }

  const json& object(const json& obj, const std::string& parent, const std::string& name) const {
    const json& v = member(obj, parent, name);
    if (!v.is_object()) fail(ErrorCode::kCorruption, key(parent, name), "is not an object", "");
    return v;
  }

  bool boolean(const json& obj, const std::string& parent, const std::string& name, bool fallback) const {
    auto it = obj.find(name);
    if (it == obj.end()) return fallback;
    if (!it->is_boolean()) fail(ErrorCode::kCorruption, key(parent, name), "is not true or false", "");
    return it->get<bool>();
  }

  std::int64_t integer(const json& v, const std::string& k) const {
    if (!v.is_number_integer()) fail(ErrorCode::kCorruption, k, "is not an integer", "");
    return v.get<std::int64_t>();
  }

  std::size_t count(const json& v, const std::string& k) const {
    if (!v.is_number_unsigned()) fail(ErrorCode::kCorruption, k, "is not a non-negative integer", "");
    return v.get<std::size_t>();
  }

  std::string string(const json& v, const std::string& k) const {
    if (!v.is_string()) fail(ErrorCode::kCorruption, k, "is not a string", "");
    return v.get<std::string>();
  }

  // The component's "type", which must be `expected`.
  void type(const json& obj, const std::string& parent, const std::vector<std::string>& expected) const {
    const std::string t = string(member(obj, parent, "type"), key(parent, "type"));
    if (std::find(expected.begin(), expected.end(), t) == expected.end()) {
      fail(ErrorCode::kNotSupported, key(parent, "type"), "is '" + t + "'",
           "this tokenizer reads BERT's pipeline only: " + join(expected));
    }
  }

  static std::string key(const std::string& parent, const std::string& name) {
    return parent.empty() ? name : parent + "." + name;
  }

  static std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : " or ") + x;
    return s;
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

Side side(const Reader& r, const json& obj, const std::string& parent) {
  auto it = obj.find("direction");
  if (it == obj.end()) return Side::kRight;
  const std::string d = r.string(*it, Reader::key(parent, "direction"));
  if (d == "Right") return Side::kRight;
  if (d == "Left") return Side::kLeft;
  r.fail(ErrorCode::kCorruption, Reader::key(parent, "direction"), "is '" + d + "'", "Right or Left");
}

}  // namespace

const char* unicode_tables_version() { return kTokenizersVersion; }

Tokenizer Tokenizer::from_file(const std::string& path) {
  Reader r(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const ErrorCode code = err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIOError;
    r.fail(code, "", std::string("cannot be opened: ") + std::strerror(err),
           "scripts/fetch-minilm.sh BUILD_DIR puts the model's tokenizer.json under BUILD_DIR/models");
  }
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) r.fail(ErrorCode::kIOError, "", "could not be read", "");
  json root;
  try {
    root = json::parse(bytes.str());
  } catch (const json::exception& e) {
    r.fail(ErrorCode::kCorruption, "", std::string("is not valid JSON: ") + e.what(), "");
  }
  if (!root.is_object()) r.fail(ErrorCode::kCorruption, "", "is not a JSON object", "");

  Tokenizer t;
  t.path_ = path;

  const json& norm = r.object(root, "", "normalizer");
  r.type(norm, "normalizer", {"BertNormalizer"});
  t.clean_text_ = r.boolean(norm, "normalizer", "clean_text", true);
  t.handle_chinese_chars_ = r.boolean(norm, "normalizer", "handle_chinese_chars", true);
  t.lowercase_ = r.boolean(norm, "normalizer", "lowercase", true);
  auto sa = norm.find("strip_accents");
  t.strip_accents_ = (sa == norm.end() || sa->is_null()) ? t.lowercase_
                                                         : r.boolean(norm, "normalizer", "strip_accents", true);

  r.type(r.object(root, "", "pre_tokenizer"), "pre_tokenizer", {"BertPreTokenizer"});

  const json& model = r.object(root, "", "model");
  if (model.contains("type")) r.type(model, "model", {"WordPiece"});
  const json& vocab = r.object(model, "model", "vocab");
  if (vocab.empty()) r.fail(ErrorCode::kCorruption, "model.vocab", "is empty", "");
  t.id_to_token_.resize(vocab.size());
  for (const auto& [token, id_json] : vocab.items()) {
    const std::int64_t id = r.integer(id_json, "model.vocab." + token);
    if (id < 0 || static_cast<std::size_t>(id) >= vocab.size() || !t.id_to_token_[id].empty()) {
      r.fail(ErrorCode::kCorruption, "model.vocab." + token, "has the id " + std::to_string(id),
             "the ids of a WordPiece vocabulary are 0 to its size - 1, each once");
    }
    t.id_to_token_[id] = token;
    t.vocab_.emplace(token, id);
  }
  t.unk_token_ = r.string(r.member(model, "model", "unk_token"), "model.unk_token");
  auto unk = t.vocab_.find(t.unk_token_);
  if (unk == t.vocab_.end()) {
    r.fail(ErrorCode::kCorruption, "model.unk_token", "names '" + t.unk_token_ + "', which model.vocab lacks", "");
  }
  t.unk_id_ = unk->second;
  if (model.contains("continuing_subword_prefix")) {
    t.prefix_ = r.string(model["continuing_subword_prefix"], "model.continuing_subword_prefix");
  }
  if (model.contains("max_input_chars_per_word")) {
    t.max_input_chars_per_word_ = r.count(model["max_input_chars_per_word"], "model.max_input_chars_per_word");
  }

  if (root.contains("added_tokens")) {
    const json& added = root["added_tokens"];
    if (!added.is_array()) r.fail(ErrorCode::kCorruption, "added_tokens", "is not an array", "");
    for (std::size_t i = 0; i < added.size(); ++i) {
      const std::string k = "added_tokens[" + std::to_string(i) + "]";
      if (!added[i].is_object()) r.fail(ErrorCode::kCorruption, k, "is not an object", "");
      AddedToken a;
      a.content = r.string(r.member(added[i], k, "content"), k + ".content");
      a.id = r.integer(r.member(added[i], k, "id"), k + ".id");
      a.normalized = r.boolean(added[i], k, "normalized", false);
      for (const char* flag : {"single_word", "lstrip", "rstrip"}) {
        if (r.boolean(added[i], k, flag, false)) {
          r.fail(ErrorCode::kNotSupported, k + "." + flag, "is true",
                 "this tokenizer matches added tokens exactly, as BERT's files ask");
        }
      }
      if (a.content.empty()) r.fail(ErrorCode::kCorruption, k + ".content", "is empty", "");
      if (a.normalized) a.content = t.normalize(a.content);
      t.added_.push_back(std::move(a));
    }
  }

  auto pp = root.find("post_processor");
  if (pp != root.end() && !pp->is_null()) {
    r.type(*pp, "post_processor", {"TemplateProcessing", "BertProcessing"});
    if ((*pp)["type"] == "BertProcessing") {
      for (const char* name : {"cls", "sep"}) {
        const json& v = r.member(*pp, "post_processor", name);
        const std::string k = std::string("post_processor.") + name;
        if (!v.is_array() || v.size() != 2) r.fail(ErrorCode::kCorruption, k, "is not [token, id]", "");
        TemplatePiece p;
        p.tokens = {r.string(v[0], k + "[0]")};
        p.ids = {r.integer(v[1], k + "[1]")};
        if (std::string(name) == "sep") t.single_.push_back(TemplatePiece{true, {}, {}, 0});
        t.single_.push_back(std::move(p));
      }
    } else {
      const json& specials = r.object(*pp, "post_processor", "special_tokens");
      const json& single = r.member(*pp, "post_processor", "single");
      if (!single.is_array()) r.fail(ErrorCode::kCorruption, "post_processor.single", "is not an array", "");
      for (std::size_t i = 0; i < single.size(); ++i) {
        const std::string k = "post_processor.single[" + std::to_string(i) + "]";
        const json& item = single[i];
        TemplatePiece p;
        if (item.is_object() && item.contains("Sequence")) {
          const json& s = r.object(item, k, "Sequence");
          const std::string id = r.string(r.member(s, k + ".Sequence", "id"), k + ".Sequence.id");
          if (id != "A") {
            r.fail(ErrorCode::kNotSupported, k + ".Sequence.id", "is '" + id + "'", "a single text is sequence A");
          }
          p.is_sequence = true;
          p.type_id = r.integer(r.member(s, k + ".Sequence", "type_id"), k + ".Sequence.type_id");
        } else if (item.is_object() && item.contains("SpecialToken")) {
          const json& s = r.object(item, k, "SpecialToken");
          const std::string id = r.string(r.member(s, k + ".SpecialToken", "id"), k + ".SpecialToken.id");
          p.type_id = r.integer(r.member(s, k + ".SpecialToken", "type_id"), k + ".SpecialToken.type_id");
          auto st = specials.find(id);
          if (st == specials.end()) {
            r.fail(ErrorCode::kCorruption, "post_processor.special_tokens." + id, "is missing",
                   "every special token of the template needs an entry there");
          }
          const std::string sk = "post_processor.special_tokens." + id;
          const json& ids = r.member(*st, sk, "ids");
          const json& tokens = r.member(*st, sk, "tokens");
          if (!ids.is_array() || !tokens.is_array() || ids.size() != tokens.size()) {
            r.fail(ErrorCode::kCorruption, sk, "has no ids and tokens of one length", "");
          }
          for (std::size_t j = 0; j < ids.size(); ++j) {
            p.ids.push_back(r.integer(ids[j], sk + ".ids"));
            p.tokens.push_back(r.string(tokens[j], sk + ".tokens"));
          }
        } else {
          r.fail(ErrorCode::kCorruption, k, "is neither a Sequence nor a SpecialToken", "");
        }
        t.single_.push_back(std::move(p));
      }
    }
  } else {
    t.single_.push_back(TemplatePiece{true, {}, {}, 0});
  }

  auto tr = root.find("truncation");
  if (tr != root.end() && !tr->is_null()) {
    if (!tr->is_object()) r.fail(ErrorCode::kCorruption, "truncation", "is not an object or null", "");
    Truncation trunc;
    trunc.max_length = r.count(r.member(*tr, "truncation", "max_length"), "truncation.max_length");
    trunc.direction = side(r, *tr, "truncation");
    if (tr->contains("strategy")) {
      const std::string s = r.string((*tr)["strategy"], "truncation.strategy");
      if (s != "LongestFirst" && s != "OnlyFirst") {
        r.fail(ErrorCode::kNotSupported, "truncation.strategy", "is '" + s + "'",
               "single texts truncate with LongestFirst or OnlyFirst");
      }
    }
    t.truncation_ = trunc;
  }

  auto pd = root.find("padding");
  if (pd != root.end() && !pd->is_null()) {
    if (!pd->is_object()) r.fail(ErrorCode::kCorruption, "padding", "is not an object or null", "");
    Padding p;
    const json& s = r.member(*pd, "padding", "strategy");
    if (s.is_string() && s == "BatchLongest") {
      p.strategy = Padding::Strategy::kLongest;
    } else if (s.is_object() && s.contains("Fixed")) {
      p.strategy = Padding::Strategy::kFixed;
      p.length = r.count(s["Fixed"], "padding.strategy.Fixed");
    } else {
      r.fail(ErrorCode::kCorruption, "padding.strategy", "is " + s.dump(), "\"BatchLongest\" or {\"Fixed\": n}");
    }
    p.direction = side(r, *pd, "padding");
    if (pd->contains("pad_to_multiple_of") && !(*pd)["pad_to_multiple_of"].is_null()) {
      p.multiple_of = r.count((*pd)["pad_to_multiple_of"], "padding.pad_to_multiple_of");
    }
    if (pd->contains("pad_id")) p.pad_id = r.integer((*pd)["pad_id"], "padding.pad_id");
    if (pd->contains("pad_type_id")) p.pad_type_id = r.integer((*pd)["pad_type_id"], "padding.pad_type_id");
    if (pd->contains("pad_token")) p.pad_token = r.string((*pd)["pad_token"], "padding.pad_token");
    t.padding_ = p;
  }
  return t;
}

void Tokenizer::set_max_length(std::size_t n) {
  Truncation trunc = truncation_.value_or(Truncation{});
  trunc.max_length = n;
  truncation_ = trunc;
  if (padding_ && padding_->strategy == Padding::Strategy::kFixed) padding_->length = n;
}

std::optional<std::int64_t> Tokenizer::token_to_id(const std::string& token) const {
  for (const auto& a : added_) {
    if (a.content == token) return a.id;
  }
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::u32string Tokenizer::normalize32(const std::u32string& text) const {
  // The steps in tokenizers' order: clean, CJK, strip accents, lowercase.
  std::u32string a;
  a.reserve(text.size() + text.size() / 4);
  for (char32_t c : text) {
    if (clean_text_) {
      if (in(kRemoved, c)) continue;
      if (in(kWhitespace, c)) c = U' ';
    }
    if (handle_chinese_chars_ && is_cjk(c)) {
      a += U' ';
      a += c;
      a += U' ';
    } else {
      a += c;
    }
  }
  if (strip_accents_) {
    std::u32string b;
    b.reserve(a.size());
    for (char32_t c : a) {
      if (c >= kHangulFirst && c <= kHangulLast) {  // NFD's algorithmic Hangul decomposition
        const char32_t s = c - kHangulFirst;
        b += static_cast<char32_t>(0x1100 + s / 588);
        b += static_cast<char32_t>(0x1161 + (s % 588) / 28);
        if (s % 28 != 0) b += static_cast<char32_t>(0x11A7 + s % 28);
      } else if (in(kStripMarks, c)) {
        continue;
      } else if (const CodeMapping* m = find(kStrip, c)) {
        b.append(kStripPool + m->offset, m->length);
      } else {
        b += c;
      }
    }
    a.swap(b);
  }
  if (lowercase_) {
    std::u32string b;
    b.reserve(a.size());
    for (char32_t c : a) {
      if (c < 0x80) {
        b += (c >= U'A' && c <= U'Z') ? c + 32 : c;
      } else if (const CodeMapping* m = find(kLower, c)) {
        b.append(kLowerPool + m->offset, m->length);
      } else {
        b += c;
      }
    }
    a.swap(b);
  }
  return a;
}

std::string Tokenizer::normalize(std::string_view text) const { return encode_utf8(normalize32(decode(text))); }

namespace {

// Splits `text` at the added tokens of `added` (leftmost, then longest, as
// tokenizers' Aho-Corasick matcher) for which `pick` holds; calls
// piece(begin, end) for the text between them and token(id) for each match.
template <class Pick, class Piece, class Token>
void split_added(const std::string& text, const std::vector<Tokenizer::AddedToken>& added, Pick pick, Piece piece,
                 Token token) {
  std::size_t start = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    const Tokenizer::AddedToken* best = nullptr;
    for (const auto& a : added) {
      if (!pick(a) || (best && a.content.size() <= best->content.size())) continue;
      if (text.compare(i, a.content.size(), a.content) == 0) best = &a;
    }
    if (!best) {
      ++i;
      continue;
    }
    if (i > start) piece(start, i);
    token(best->id);
    i += best->content.size();
    start = i;
  }
  if (text.size() > start) piece(start, text.size());
}

}  // namespace

std::vector<Tokenizer::Word> Tokenizer::words(std::string_view text) const {
  std::vector<Word> out;
  auto pre_tokenize = [&](const std::u32string& s) {
    std::size_t begin = 0;
    auto flush = [&](std::size_t end) {
      if (end > begin) out.push_back(Word{encode_utf8(s, begin, end), std::nullopt});
    };
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (in(kSplitSpace, s[i])) {
        flush(i);
        begin = i + 1;
      } else if (in(kPunctuation, s[i])) {
        flush(i);
        out.push_back(Word{encode_utf8(s, i, i + 1), std::nullopt});
        begin = i + 1;
      }
    }
    flush(s.size());
  };
  auto added_word = [&](std::int64_t id) { out.push_back(Word{std::string(), id}); };
  const std::string raw(text);
  decode(raw);  // refuses invalid UTF-8 before anything is matched
  split_added(
      raw, added_, [](const AddedToken& a) { return !a.normalized; },
      [&](std::size_t b, std::size_t e) {
        const std::string normalized = encode_utf8(normalize32(decode(raw.substr(b, e - b))));
        split_added(
            normalized, added_, [](const AddedToken& a) { return a.normalized; },
            [&](std::size_t b2, std::size_t e2) { pre_tokenize(decode(normalized.substr(b2, e2 - b2))); }, added_word);
      },
      added_word);
  return out;
}

void Tokenizer::wordpiece(const std::string& word, std::vector<std::int64_t>* ids) const {
  const std::u32string chars = decode(word);
  if (chars.size() > max_input_chars_per_word_) {
    ids->push_back(unk_id_);
    return;
  }
  std::vector<std::int64_t> pieces;
  std::size_t start = 0;
  while (start < chars.size()) {
    std::size_t end = chars.size();
    std::optional<std::int64_t> found;
    while (end > start) {
      std::string sub = encode_utf8(chars, start, end);
      if (start > 0) sub = prefix_ + sub;
      auto it = vocab_.find(sub);
      if (it != vocab_.end()) {
        found = it->second;
        break;
      }
      --end;
    }
    if (!found) {  // a piece not in the vocabulary: the whole word is unknown
      ids->push_back(unk_id_);
      return;
    }
    pieces.push_back(*found);
    start = end;
  }
  ids->insert(ids->end(), pieces.begin(), pieces.end());
}

std::vector<std::int64_t> Tokenizer::word_ids(std::string_view text) const {
  std::vector<std::int64_t> ids;
  for (const Word& w : words(text)) {
    if (w.added_id) {
      ids.push_back(*w.added_id);
    } else {
      wordpiece(w.text, &ids);
    }
  }
  return ids;
}

std::vector<std::string> Tokenizer::tokenize(std::string_view text) const {
  const std::vector<std::int64_t> ids = word_ids(text);
  std::vector<std::string> tokens;
  for (std::int64_t id : ids) tokens.push_back(id_string(id));
  return tokens;
}

std::string Tokenizer::id_string(std::int64_t id) const {
  for (const auto& a : added_) {
    if (a.id == id) return a.content;
  }
  if (id >= 0 && static_cast<std::size_t>(id) < id_to_token_.size()) return id_to_token_[id];
  return "";
}

Encoding Tokenizer::encode_unpadded(std::string_view text) const {
  std::vector<std::int64_t> ids = word_ids(text);
  if (truncation_) {
    std::size_t specials = 0;
    for (const auto& p : single_) specials += p.ids.size();
    const std::size_t keep = truncation_->max_length > specials ? truncation_->max_length - specials : 0;
    if (ids.size() > keep) {
      if (truncation_->direction == Side::kRight) {
        ids.resize(keep);
      } else {
        ids.erase(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(keep));
      }
    }
  }
  Encoding e;
  for (const auto& p : single_) {
    if (p.is_sequence) {
      for (std::int64_t id : ids) {
        e.input_ids.push_back(id);
        e.token_type_ids.push_back(p.type_id);
        e.tokens.push_back(id_string(id));
      }
    } else {
      for (std::size_t j = 0; j < p.ids.size(); ++j) {
        e.input_ids.push_back(p.ids[j]);
        e.token_type_ids.push_back(p.type_id);
        e.tokens.push_back(p.tokens[j]);
      }
    }
  }
  e.attention_mask.assign(e.input_ids.size(), 1);
  return e;
}

void Tokenizer::pad(Encoding* e, std::size_t length, const Padding& p) const {
  if (p.multiple_of > 0 && length % p.multiple_of != 0) length += p.multiple_of - length % p.multiple_of;
  if (e->input_ids.size() >= length) return;
  const std::size_t n = length - e->input_ids.size();
  const bool right = p.direction == Side::kRight;
  auto fill = [&](auto* v, auto value) { v->insert(right ? v->end() : v->begin(), n, value); };
  fill(&e->input_ids, p.pad_id);
  fill(&e->attention_mask, std::int64_t{0});
  fill(&e->token_type_ids, p.pad_type_id);
  fill(&e->tokens, p.pad_token);
}

Encoding Tokenizer::encode(std::string_view text) const {
  Encoding e = encode_unpadded(text);
  if (padding_) {
    pad(&e, padding_->strategy == Padding::Strategy::kFixed ? padding_->length : e.input_ids.size(), *padding_);
  }
  return e;
}

Batch Tokenizer::encode_batch(const std::vector<std::string>& texts) const {
  std::vector<Encoding> rows;
  rows.reserve(texts.size());
  std::size_t longest = 0;
  for (const auto& t : texts) {
    rows.push_back(encode_unpadded(t));
    longest = std::max(longest, rows.back().input_ids.size());
  }
  const Padding p = padding_.value_or(Padding{});
  std::size_t length = longest;
  if (p.strategy == Padding::Strategy::kFixed) length = std::max(longest, p.length);
  if (p.multiple_of > 0 && length % p.multiple_of != 0) length += p.multiple_of - length % p.multiple_of;
  Batch b;
  b.batch_size = rows.size();
  b.seq_len = rows.empty() ? 0 : length;
  for (Encoding& e : rows) {
    pad(&e, length, p);
    b.input_ids.insert(b.input_ids.end(), e.input_ids.begin(), e.input_ids.end());
    b.attention_mask.insert(b.attention_mask.end(), e.attention_mask.begin(), e.attention_mask.end());
    b.token_type_ids.insert(b.token_type_ids.end(), e.token_type_ids.begin(), e.token_type_ids.end());
  }
  return b;
}

}  // namespace bert
