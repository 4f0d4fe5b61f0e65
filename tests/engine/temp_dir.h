// TempDir: a fresh directory under the system temp dir, removed with everything in it when the
// object goes (tests only).
#pragma once

#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace stp::testing {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "stp_test_XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    // nftw rather than std::filesystem::remove_all: libtorch.so exports its own copy of the
    // latter, which crashes in a binary that binds to it (engine/checkpoint.cpp,
    // Note [No std::filesystem::remove_all]).
    ::nftw(path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); },
           16, FTW_DEPTH | FTW_PHYS);
  }
  std::string str() const { return path.string(); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

}  // namespace stp::testing
