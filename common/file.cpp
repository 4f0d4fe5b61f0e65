#include "common/file.h"

#include <fstream>
#include <stdexcept>

namespace stp {

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot open '" + path + "' for writing");
  out << text;
  out.close();
  if (!out) throw std::runtime_error("cannot write '" + path + "'");
}

}  // namespace stp
