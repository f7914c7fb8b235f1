# ctest driver: install lorakeep from BUILD_DIR into a scratch prefix, build
# tests/consumer against it with find_package, and run the result; with
# TEST_DEVICE_DIR, also its program on the test device, compiled from there.
set(prefix "${WORK_DIR}/prefix")
file(REMOVE_RECURSE "${WORK_DIR}")
execute_process(COMMAND ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}"
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(rc)
  message(FATAL_ERROR "install failed: ${rc}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/consumer" -B "${WORK_DIR}/build" -G Ninja
                        "-DCMAKE_PREFIX_PATH=${prefix};${TORCH_PREFIX_PATH}" "-DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER}"
                        "-DTEST_DEVICE_DIR=${TEST_DEVICE_DIR}"
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the consumer failed: ${rc}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build "${WORK_DIR}/build" RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the consumer failed: ${rc}")
endif()
execute_process(COMMAND "${WORK_DIR}/build/consumer" "${WORK_DIR}" RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "the consumer failed: ${rc}")
endif()
if(TEST_DEVICE_DIR)
  execute_process(COMMAND "${WORK_DIR}/build/consumer_device" "${WORK_DIR}" RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "the consumer on the test device failed: ${rc}")
  endif()
endif()
