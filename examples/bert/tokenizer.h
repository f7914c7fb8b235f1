// The BERT example's tokenizer: Hugging Face's WordPiece pipeline, read from a
// tokenizer.json of BERT type and giving the ids that the `tokenizers` package
// gives for it (tests/bert_tokenizer_test.cpp compares them).
//
// Supported (anything else in the file is refused, naming the key):
//   normalizer      BertNormalizer: clean_text, handle_chinese_chars,
//                   strip_accents (null: follows lowercase), lowercase
//   pre_tokenizer   BertPreTokenizer: whitespace and punctuation splits
//   model           WordPiece: vocab, unk_token, continuing_subword_prefix,
//                   max_input_chars_per_word
//   post_processor  TemplateProcessing, its `single` template ([CLS] $A [SEP])
//   added_tokens    matched in the raw text before normalization (normalized:
//                   false) or in the normalized text (true); lstrip, rstrip and
//                   single_word are not supported
//   truncation      max_length, direction (stride and pairs unsupported)
//   padding         Fixed / BatchLongest, direction, pad_to_multiple_of,
//                   pad_id, pad_type_id, pad_token
//
// Character classes, NFD and lowercase follow tokenizers 0.15.2 exactly, code
// point by code point (examples/bert/unicode_tables.inc, generated from it).
//
// No LibTorch: the vectors go to torch::from_blob or torch::tensor as the
// caller likes. Thread-safety: a const Tokenizer may be used from any number
// of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bert {

enum class Side { kRight, kLeft };

struct Truncation {
  std::size_t max_length = 512;   // tokens, special tokens included
  Side direction = Side::kRight;  // kRight drops the end of the text
};

struct Padding {
  enum class Strategy { kLongest, kFixed };
  Strategy strategy = Strategy::kLongest;  // kLongest: the longest of the batch
  std::size_t length = 0;                  // kFixed: every row this long (longer rows stay longer)
  std::size_t multiple_of = 0;             // 0: none
  Side direction = Side::kRight;
  std::int64_t pad_id = 0;
  std::int64_t pad_type_id = 0;
  std::string pad_token = "[PAD]";
};

// One text, as the model takes it.
struct Encoding {
  std::vector<std::int64_t> input_ids;
  std::vector<std::int64_t> attention_mask;  // 1 for tokens, 0 for padding
  std::vector<std::int64_t> token_type_ids;
  std::vector<std::string> tokens;  // the vocabulary's strings, for messages and tests
};

// A batch as rows of equal length, row-major: element (i, j) is at i * seq_len + j.
struct Batch {
  std::size_t batch_size = 0;
  std::size_t seq_len = 0;
  std::vector<std::int64_t> input_ids;
  std::vector<std::int64_t> attention_mask;
  std::vector<std::int64_t> token_type_ids;
};

// The Hugging Face tokenizers release whose normalizer and pre-tokenizer the
// character tables reproduce (examples/bert/gen_unicode_tables.py probed it).
// Releases differ in lowercasing code points that Unicode assigned lately.
const char* unicode_tables_version();

class Tokenizer {
 public:
  // Reads a tokenizer.json. Throws lorakeep::Error naming the file and the key:
  // kNotFound (no file), kIOError, kCorruption (not JSON, a key missing or of
  // the wrong type), kNotSupported (a component other than BERT's).
  static Tokenizer from_file(const std::string& path);

  // The normalized text (the BertNormalizer step alone). Throws
  // lorakeep::Error (kInvalidArgument) if `text` is not valid UTF-8.
  std::string normalize(std::string_view text) const;

  // The WordPiece tokens of `text`, without special tokens, truncation or padding.
  std::vector<std::string> tokenize(std::string_view text) const;

  // One text: template applied, then truncated and padded with the settings
  // in force (the file's, unless changed below).
  Encoding encode(std::string_view text) const;

  // Texts padded to one length: the longest (Padding::kLongest, also when the
  // file has no padding) or Padding::length (kFixed), rounded up to
  // multiple_of; truncated as encode() does.
  Batch encode_batch(const std::vector<std::string>& texts) const;

  // Caller overrides. set_max_length(n): truncation to n, and fixed padding,
  // if the file asks for it, to n too.
  void set_truncation(std::optional<Truncation> truncation) { truncation_ = truncation; }
  void set_padding(std::optional<Padding> padding) { padding_ = padding; }
  void set_max_length(std::size_t n);
  const std::optional<Truncation>& truncation() const { return truncation_; }
  const std::optional<Padding>& padding() const { return padding_; }

  std::size_t vocab_size() const { return vocab_.size(); }
  // The id of a vocabulary or added token; nullopt if there is none.
  std::optional<std::int64_t> token_to_id(const std::string& token) const;
  const std::string& path() const { return path_; }

  struct AddedToken {
    std::string content;
    std::int64_t id = 0;
    bool normalized = false;
  };
  struct TemplatePiece {
    bool is_sequence = false;       // $A, else a special token
    std::vector<std::int64_t> ids;  // a special token's ids
    std::vector<std::string> tokens;
    std::int64_t type_id = 0;
  };

 private:
  struct Word {
    std::string text;
    std::optional<std::int64_t> added_id;  // an added token, kept whole
  };

  // The words of `text` (added tokens whole): normalization and pre-tokenization.
  std::vector<Word> words(std::string_view text) const;
  std::u32string normalize32(const std::u32string& text) const;
  std::string id_string(std::int64_t id) const;
  void wordpiece(const std::string& word, std::vector<std::int64_t>* ids) const;
  // The ids of every word of `text`: added tokens whole, the rest by WordPiece.
  std::vector<std::int64_t> word_ids(std::string_view text) const;
  Encoding encode_unpadded(std::string_view text) const;
  void pad(Encoding* e, std::size_t length, const Padding& p) const;

  std::string path_;
  // normalizer
  bool clean_text_ = true;
  bool handle_chinese_chars_ = true;
  bool strip_accents_ = true;
  bool lowercase_ = true;
  // model
  std::unordered_map<std::string, std::int64_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::string unk_token_;
  std::int64_t unk_id_ = 0;
  std::string prefix_ = "##";
  std::size_t max_input_chars_per_word_ = 100;
  std::vector<AddedToken> added_;
  std::vector<TemplatePiece> single_;
  std::optional<Truncation> truncation_;
  std::optional<Padding> padding_;
};

}  // namespace bert
