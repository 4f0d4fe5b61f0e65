# ccache with its cache at machine level, so a fresh clone (what CI builds) reuses earlier work.
# BASEDIR + NOHASHDIR make hits independent of where the clone lives.
find_program(STP_CCACHE ccache)
if(STP_CCACHE)
  set(_stp_launcher ${CMAKE_COMMAND} -E env
      CCACHE_DIR=${STP_CCACHE_DIR} CCACHE_BASEDIR=${CMAKE_SOURCE_DIR} CCACHE_NOHASHDIR=1
      CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
      ${STP_CCACHE})
  set(CMAKE_C_COMPILER_LAUNCHER ${_stp_launcher})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${_stp_launcher})
  message(STATUS "stp: ccache on, cache at ${STP_CCACHE_DIR}")
endif()
