// Splits a byte stream into newline-terminated lines with a hard length cap.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kvm {

// A line longer than the cap is reported once and then skipped up to its newline without being
// buffered, so a hostile or broken peer cannot make us hold more than `max_line` bytes.
// "\r\n" endings are accepted and blank lines are skipped.
class LineFramer {
 public:
  explicit LineFramer(size_t max_line) : max_line_(max_line) {}

  // Calls on_line(std::string_view) per complete line and on_oversized() per line over the cap.
  // The views are valid only during the callback.
  template <class OnLine, class OnOversized>
  void Feed(std::string_view bytes, OnLine&& on_line, OnOversized&& on_oversized);

  // Forgets a partial line, e.g. when the peer on the other end of a serial port changed.
  void Reset() {
    partial_.clear();
    skipping_ = false;
  }

  void set_max_line(size_t max_line) { max_line_ = max_line; }
  size_t max_line() const { return max_line_; }
  size_t buffered() const { return partial_.size(); }

 private:
  size_t max_line_;
  std::string partial_;
  bool skipping_ = false;  // inside an oversized line, dropping bytes until '\n'
};

// A line of JSON whitespace only (spaces, tabs, CRs) is a blank line: skipped, not an error.
// Cheap: a request's first byte is '{' or '['.
inline bool IsBlankLine(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

template <class OnLine, class OnOversized>
void LineFramer::Feed(std::string_view bytes, OnLine&& on_line, OnOversized&& on_oversized) {
  while (!bytes.empty()) {
    size_t nl = bytes.find('\n');
    if (skipping_) {
      if (nl == std::string_view::npos) return;
      skipping_ = false;
      bytes.remove_prefix(nl + 1);
      continue;
    }
    if (nl == std::string_view::npos) {
      // One byte of slack: the line may still turn out to end in "\r\n".
      if (partial_.size() + bytes.size() > max_line_ + 1) {
        partial_.clear();
        skipping_ = true;
        on_oversized();
        return;
      }
      partial_.append(bytes);
      return;
    }
    std::string_view piece = bytes.substr(0, nl);
    bytes.remove_prefix(nl + 1);
    if (partial_.empty()) {
      // Common case: the whole line arrived in this read; no copy.
      if (!piece.empty() && piece.back() == '\r') piece.remove_suffix(1);
      if (piece.size() > max_line_) {
        on_oversized();
      } else if (!IsBlankLine(piece)) {
        on_line(piece);
      }
      continue;
    }
    partial_.append(piece);
    std::string_view line = partial_;
    if (line.back() == '\r') line.remove_suffix(1);
    if (line.size() > max_line_) {
      on_oversized();
    } else if (!IsBlankLine(line)) {
      on_line(line);
    }
    partial_.clear();
  }
}

}  // namespace kvm
