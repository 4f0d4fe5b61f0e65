// Test helpers for code that reads and writes files: TempDir (a fresh directory, removed with
// everything in it when the object goes), whole-file read/write, and expect_invalid (the call
// throws std::invalid_argument whose message contains a needle), error_of (that message).
#pragma once

#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace stp::testing {

// The Python that scripts/setup.sh installs (with torch and safetensors), for interop tests.
inline constexpr const char* kPython = "/opt/stp-venv/bin/python";

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "stp_test_XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    // nftw rather than std::filesystem::remove_all: libtorch.so exports its own copy of the
    // latter, which crashes in a binary that binds to it (checkpoint/checkpoint.cpp,
    // Note [No std::filesystem::remove_all]).
    ::nftw(
        path.c_str(),
        [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
        FTW_DEPTH | FTW_PHYS);
  }
  std::string str() const { return path.string(); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The lines of a text file, without their newlines (none when it does not exist).
inline std::vector<std::string> read_lines(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

inline void write_bytes(const std::filesystem::path& p, const std::string& b) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << b;
}

// <tmp>/stp_<suite>_<name>_<pid>, created empty (whatever was there is removed first) and kept
// afterwards for inspection; for tests that hand a directory to a whole run.
inline std::string fresh_temp_dir(const std::string& suite, const std::string& name) {
  std::filesystem::path p = std::filesystem::temp_directory_path() /
                            ("stp_" + suite + "_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// The message of the std::invalid_argument `fn` throws, or "<no error>".
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "<no error>";
}

// Expects `fn` to throw std::invalid_argument whose message contains `needle`.
template <typename Fn>
void expect_invalid(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected std::invalid_argument containing: " << needle;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message: " << e.what() << "\nexpected to contain: " << needle;
  }
}

}  // namespace stp::testing
