# Install rules and the exported package: find_package(stp) + target_link_libraries(app stp::stp).
include(CMakePackageConfigHelpers)
set(_stp_targets stp_common stp_schedule stp_allocator stp_offload)
if(STP_BUILD_ENGINE)
  list(APPEND _stp_targets stp_engine stp_models stp)
endif()
install(TARGETS ${_stp_targets} EXPORT stpTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# Only the public API: stp/stp.h and the headers it reaches (no c10d, nothing internal). The
# embed example, built against this install by `./dev test`, fails if the list misses one.
set(_stp_public_headers
  engine/activation_set.h engine/activation_store.h engine/chunk.h engine/comm_options.h
  engine/offload_plan.h engine/optimizer.h engine/step_stats.h engine/trainer.h
  models/decoder_chunk.h models/gpt.h models/gpt_config.h models/gpt_params.h
  schedule/generators.h schedule/program.h schedule/timeline.h)
if(STP_BUILD_ENGINE)
  foreach(_h ${_stp_public_headers})
    get_filename_component(_d ${_h} DIRECTORY)
    install(FILES ${PROJECT_SOURCE_DIR}/${_h} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/stp/${_d})
  endforeach()
  install(FILES ${PROJECT_SOURCE_DIR}/include/stp/stp.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/stp)
endif()
if(TARGET stp_cli)
  install(TARGETS stp_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(EXPORT stpTargets NAMESPACE stp:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/stp)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/stpConfig.cmake.in
  ${PROJECT_BINARY_DIR}/stpConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/stp)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/stpConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/stpConfig.cmake ${PROJECT_BINARY_DIR}/stpConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/stp)
