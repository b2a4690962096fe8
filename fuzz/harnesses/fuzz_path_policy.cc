// libFuzzer: the lexical path policy (NormalizeAbsolute, NormalizeEntries, CheckLexical,
// PathPolicy::Check) against a slow component-list reference. Input: lines; the last line is the
// path, the lines before it are allowed entries. The whole input (newlines included) is also
// normalized on its own, so every byte value reaches NormalizeAbsolute.
// Invariants: a normalized path is absolute with no empty, "." or ".." component and normalizes
// to itself; "under an entry" is decided by whole components ("/tmpfoo" is never under "/tmp"),
// the longest entry wins, entry + remainder rebuild the path; a refusal from Check is a
// permission_denied RpcError whose message is valid UTF-8 whenever the path is.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "agent/handlers/files/file_io.h"
#include "agent/handlers/files/path_policy.h"
#include "protocol/errors.h"
#include "protocol/utf8.h"

namespace {

using kvm::files::LexicalRefusal;
using Parts = std::vector<std::string>;

[[noreturn]] void Fail(const char* why, std::string_view path, std::string_view detail = {}) {
  std::fprintf(stderr, "fuzz_path_policy: %s (path %zu bytes: %.300s) %.300s\n", why, path.size(),
               std::string(path).c_str(), std::string(detail).c_str());
  std::abort();
}

// The documented rules, written the slow way: split at '/', drop empty and "." parts.
LexicalRefusal Reference(std::string_view path, Parts& parts) {
  parts.clear();
  if (path.empty()) return LexicalRefusal::kEmpty;
  for (char c : path) {
    if (c == '\0') return LexicalRefusal::kNulByte;
  }
  if (path.size() > kvm::files::kMaxPathBytes) return LexicalRefusal::kTooLong;
  if (path.front() != '/') return LexicalRefusal::kNotAbsolute;
  std::string part;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      if (part == "..") return LexicalRefusal::kDotDot;
      if (!part.empty() && part != ".") parts.push_back(part);
      part.clear();
    } else {
      part += path[i];
    }
  }
  return LexicalRefusal::kNone;
}

// "/a/b" ("/" for no parts).
std::string Join(const Parts& parts) {
  std::string out;
  for (const auto& part : parts) out += "/" + part;
  return out.empty() ? "/" : out;
}

// "c/d": the parts from index `from` on, without a leading slash.
std::string Below(const Parts& parts, size_t from) {
  std::string out;
  for (size_t i = from; i < parts.size(); ++i) out += (i > from ? "/" : "") + parts[i];
  return out;
}

bool IsComponentPrefix(const Parts& entry, const Parts& path) {
  if (entry.size() > path.size()) return false;
  for (size_t i = 0; i < entry.size(); ++i) {
    if (entry[i] != path[i]) return false;
  }
  return true;
}

// NormalizeAbsolute agrees with the reference, and its output is a fixed point.
LexicalRefusal CheckNormalize(std::string_view path, Parts& parts) {
  std::string out;
  LexicalRefusal got = kvm::files::NormalizeAbsolute(path, out);
  LexicalRefusal want = Reference(path, parts);
  if (got != want) Fail("refusal differs from the reference", path, kvm::files::RefusalText(got));
  if (got != LexicalRefusal::kNone) return got;
  std::string expected = Join(parts);
  if (out != expected) Fail("normal form differs from the reference", path, out);
  if (out.size() > path.size()) Fail("normal form is longer than the input", path, out);
  std::string again;
  if (kvm::files::NormalizeAbsolute(out, again) != LexicalRefusal::kNone || again != out) {
    Fail("normal form does not normalize to itself", path, out);
  }
  return got;
}

void CheckMatch(std::string_view path, const std::vector<std::string>& raw_entries) {
  Parts path_parts;
  CheckNormalize(path, path_parts);

  std::vector<std::string> entries = kvm::files::NormalizeEntries(raw_entries);
  std::vector<Parts> entry_parts;
  for (const auto& raw : raw_entries) {
    Parts p;
    if (Reference(raw, p) == LexicalRefusal::kNone) entry_parts.push_back(p);
  }
  if (entry_parts.size() != entries.size()) Fail("NormalizeEntries kept the wrong entries", path);
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i] != Join(entry_parts[i])) {
      Fail("entry normalized differently", path, entries[i]);
    }
  }

  kvm::files::LexicalResult r = kvm::files::CheckLexical(path, entries);
  LexicalRefusal lexical = Reference(path, path_parts);
  // Whole-component matching: the longest entry that is a component prefix of the path.
  bool found = false;
  size_t best = 0;
  if (lexical == LexicalRefusal::kNone) {
    for (size_t i = 0; i < entry_parts.size(); ++i) {
      if (IsComponentPrefix(entry_parts[i], path_parts) &&
          (!found || entry_parts[i].size() > entry_parts[best].size())) {
        found = true;
        best = i;
      }
    }
  }
  LexicalRefusal want = lexical != LexicalRefusal::kNone ? lexical
                        : found                          ? LexicalRefusal::kNone
                                                         : LexicalRefusal::kOutside;
  if (r.refusal != want) Fail("CheckLexical decision differs", path, r.normalized);
  if (!r.allowed()) return;
  if (r.entry >= entries.size()) Fail("entry index out of range", path);
  // Equal-length matches are the same entry text; any of them is a correct answer.
  if (entries[r.entry] != entries[best]) Fail("not the longest matching entry", path);
  if (r.remainder != Below(path_parts, entry_parts[best].size())) {
    Fail("remainder is not the path below the entry", path, r.remainder);
  }
  std::string rebuilt = entries[r.entry];
  if (!r.remainder.empty()) rebuilt += (rebuilt == "/" ? "" : "/") + r.remainder;
  if (rebuilt != r.normalized) Fail("entry + remainder do not rebuild the path", path, rebuilt);

  // The throwing wrapper: same decision, and a refusal is the documented error.
  kvm::files::PathPolicy policy(raw_entries, {}, kvm::files::Resolver::kWalk);
  try {
    kvm::files::LexicalResult c = policy.Check(path, kvm::files::Access::kRead);
    if (c.normalized != r.normalized) Fail("Check and CheckLexical disagree", path);
  } catch (const kvm::RpcError&) {
    Fail("Check refused an allowed path", path);
  }
}

void CheckRefusalError(std::string_view path) {
  kvm::files::PathPolicy policy({"/nonexistent-fuzz-entry"}, {}, kvm::files::Resolver::kWalk);
  if (kvm::files::CheckLexical(path, policy.entries(kvm::files::Access::kWrite)).allowed()) {
    Fail("a write path was allowed with no write entries", path);
  }
  try {
    policy.Check(path, kvm::files::Access::kWrite);
  } catch (const kvm::RpcError& e) {
    if (e.code() != kvm::ErrorCode::kPermissionDenied) Fail("refusal is not -32000", path);
    // The message quotes (a prefix of) the path; the reply must stay valid JSON text.
    if (kvm::IsValidUtf8(path) && !kvm::IsValidUtf8(e.what()))
      Fail("error message is not UTF-8", path, e.what());
    return;
  }
  Fail("Check did not throw for a refused path", path);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  Parts parts;
  CheckNormalize(input, parts);

  std::vector<std::string> entries;
  size_t start = 0;
  size_t nl;
  while ((nl = input.find('\n', start)) != std::string_view::npos && entries.size() < 16) {
    entries.emplace_back(input.substr(start, nl - start));
    start = nl + 1;
  }
  std::string_view path = input.substr(start);
  CheckMatch(path, entries);
  CheckRefusalError(path);
  return 0;
}
