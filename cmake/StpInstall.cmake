# Install rules and the exported package: find_package(stp) + target_link_libraries(app stp::stp).
include(CMakePackageConfigHelpers)
set(_stp_targets stp_common stp_schedule stp_allocator stp_offload)
if(STP_BUILD_ENGINE)
  list(APPEND _stp_targets stp_engine stp)
endif()
install(TARGETS ${_stp_targets} EXPORT stpTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
foreach(_dir common schedule allocator offload engine)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${_dir}/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/stp/${_dir}
          FILES_MATCHING PATTERN "*.h")
endforeach()
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/stp/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/stp)
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
