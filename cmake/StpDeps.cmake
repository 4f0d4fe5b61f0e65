# Third-party dependencies. Everything optional is announced in the summary line at the end of
# configuration; everything required fails here with the package to install.
find_package(Threads REQUIRED)
# nlohmann/json (header-only): the one way every room reads and writes JSON.
find_package(nlohmann_json 3 REQUIRED)

# hwloc and libnuma: NUMA placement of pinned slabs and copy threads (optional on GPU machines
# that lack the -dev packages; placement then falls back to "no binding").
find_path(STP_HWLOC_INCLUDE hwloc.h)
find_library(STP_HWLOC_LIB hwloc)
find_path(STP_NUMA_INCLUDE numa.h)
find_library(STP_NUMA_LIB numa)
set(STP_HAVE_HWLOC OFF)
set(STP_HAVE_NUMA OFF)
if(STP_HWLOC_INCLUDE AND STP_HWLOC_LIB)
  set(STP_HAVE_HWLOC ON)
endif()
if(STP_NUMA_INCLUDE AND STP_NUMA_LIB)
  set(STP_HAVE_NUMA ON)
endif()

# LibTorch, from the torch wheel's CMake config (never imported at run time).
if(STP_BUILD_ENGINE)
  if(NOT Torch_DIR AND NOT STP_TORCH_PREFIX)
    set(_stp_py "${STP_PYTHON}")
    if(NOT _stp_py)
      if(EXISTS /opt/stp-venv/bin/python)
        set(_stp_py /opt/stp-venv/bin/python)
      else()
        find_program(_stp_py NAMES python3 python)
      endif()
    endif()
    execute_process(COMMAND ${_stp_py} -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
                    OUTPUT_VARIABLE STP_TORCH_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE
                    RESULT_VARIABLE _stp_rc ERROR_QUIET)
    if(NOT _stp_rc EQUAL 0)
      message(FATAL_ERROR "stp: cannot find PyTorch with ${_stp_py}; run scripts/setup.sh or pass -DSTP_TORCH_PREFIX=<torch.utils.cmake_prefix_path>")
    endif()
    set(STP_TORCH_PREFIX "${STP_TORCH_PREFIX}" CACHE PATH "torch.utils.cmake_prefix_path")
    set(STP_TORCH_PYTHON "${_stp_py}" CACHE FILEPATH "the Python whose torch stp builds against")
  endif()
  list(APPEND CMAKE_PREFIX_PATH "${STP_TORCH_PREFIX}")
  # A CUDA LibTorch probes the installed GPUs with try_run unless told the architectures;
  # we compile no kernels, so name Hopper and skip the probe (it fails on machines with no GPU).
  if(NOT TORCH_CUDA_ARCH_LIST)
    set(TORCH_CUDA_ARCH_LIST "9.0")
  endif()
  find_package(Torch REQUIRED)
  # The wheel's libraries live beside torch/lib; executables find them through RPATH.
  get_filename_component(STP_TORCH_LIB_DIR "${TORCH_INCLUDE_DIRS}" DIRECTORY)
  list(GET TORCH_INCLUDE_DIRS 0 _stp_torch_inc)
  get_filename_component(STP_TORCH_LIB_DIR "${_stp_torch_inc}/../lib" ABSOLUTE)
endif()

# CUDA: runtime API only (no kernels of our own); NCCL for the GPU comm backend.
set(STP_HAVE_CUDA OFF)
set(STP_HAVE_NCCL OFF)
if(NOT STP_WITH_CUDA STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  set(_stp_torch_cuda ON)
  if(STP_BUILD_ENGINE AND NOT TARGET torch_cuda)
    set(_stp_torch_cuda OFF)
  endif()
  if(CUDAToolkit_FOUND AND _stp_torch_cuda)
    set(STP_HAVE_CUDA ON)
  elseif(STP_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "STP_WITH_CUDA=ON but CUDA toolkit found=${CUDAToolkit_FOUND}, CUDA LibTorch=${_stp_torch_cuda}")
  endif()
endif()
# NCCL (gpu-review item 5): nccl.h from the torch wheel only, never the toolkit's. The layout of
# c10d's ProcessGroupNCCL classes depends on the header's version (NCCL_HAS_CONFIG and friends in
# NCCLUtils.hpp; Options::create() is inline), so a header other than the one torch was built
# with corrupts the heap at group creation. stp calls no NCCL function and links no libnccl:
# libtorch_cuda loads the wheel's. Configure fails when the header and torch disagree.
if(STP_HAVE_CUDA)
  find_path(STP_TORCH_NCCL_INCLUDE nccl.h
            PATHS "${STP_TORCH_LIB_DIR}/../../nvidia/nccl/include"
                  "${STP_TORCH_LIB_DIR}/../../nvidia/cu13/include" NO_DEFAULT_PATH)
  if(STP_TORCH_NCCL_INCLUDE)
    file(STRINGS "${STP_TORCH_NCCL_INCLUDE}/nccl.h" _stp_nccl_defs
         REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
    foreach(_part MAJOR MINOR PATCH)
      string(REGEX REPLACE ".*#define NCCL_${_part} +([0-9]+).*" "\\1" _stp_nccl_${_part}
             "${_stp_nccl_defs}")
    endforeach()
    set(STP_NCCL_VERSION "${_stp_nccl_MAJOR}.${_stp_nccl_MINOR}.${_stp_nccl_PATCH}")
    math(EXPR STP_NCCL_VERSION_CODE
         "${_stp_nccl_MAJOR} * 10000 + ${_stp_nccl_MINOR} * 100 + ${_stp_nccl_PATCH}")
    if(STP_TORCH_PYTHON)
      execute_process(
        COMMAND ${STP_TORCH_PYTHON} -c
                "import torch; print('.'.join(map(str, torch.cuda.nccl.version())))"
        OUTPUT_VARIABLE _stp_torch_nccl OUTPUT_STRIP_TRAILING_WHITESPACE
        RESULT_VARIABLE _stp_rc ERROR_QUIET)
      if(_stp_rc EQUAL 0 AND NOT _stp_torch_nccl STREQUAL STP_NCCL_VERSION)
        message(FATAL_ERROR "stp: ${STP_TORCH_NCCL_INCLUDE}/nccl.h is NCCL ${STP_NCCL_VERSION} "
                            "but torch was built with NCCL ${_stp_torch_nccl}; reinstall the "
                            "torch wheel's nvidia-nccl package")
      endif()
    endif()
    set(STP_HAVE_NCCL ON)
  endif()
endif()

# stp_deps_*: one place that turns the findings into usage requirements.
function(stp_link_numa target)
  if(STP_HAVE_HWLOC)
    target_include_directories(${target} PRIVATE ${STP_HWLOC_INCLUDE})
    target_link_libraries(${target} PUBLIC ${STP_HWLOC_LIB})
    target_compile_definitions(${target} PRIVATE STP_HAVE_HWLOC=1)
  endif()
  if(STP_HAVE_NUMA)
    target_include_directories(${target} PRIVATE ${STP_NUMA_INCLUDE})
    target_link_libraries(${target} PUBLIC ${STP_NUMA_LIB})
    target_compile_definitions(${target} PRIVATE STP_HAVE_NUMA=1)
  endif()
endfunction()

function(stp_link_cuda target)
  if(STP_HAVE_CUDA)
    target_link_libraries(${target} PUBLIC CUDA::cudart)
    target_compile_definitions(${target} PUBLIC STP_WITH_CUDA=1)
  endif()
endfunction()

# Common include layout: sources include "schedule/program.h"; installed under include/stp/.
# stp_add_room(<target> <deps...>): the static library of a folder (every .cpp in it), one per
# room (DESIGN.md's folder table), linked PUBLIC to the rooms it depends on.
function(stp_add_room target)
  file(GLOB _srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  add_library(${target} STATIC ${_srcs})
  stp_library(${target})
  target_link_libraries(${target} PUBLIC ${ARGN} nlohmann_json::nlohmann_json)
endfunction()

function(stp_library target)
  target_include_directories(${target} PUBLIC
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}/stp>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
endfunction()
