# Installs mechlab from BUILD_DIR into a fresh prefix under WORK, then
# configures, builds and runs the user project in SOURCE against it, and
# checks what it prints. Run by CTest (tests/CMakeLists.txt):
#   cmake -DBUILD_DIR=... -DSOURCE=... -DWORK=... -DTorch_DIR=... -DGENERATOR=... -P check_install.cmake
cmake_minimum_required(VERSION 3.25)
file(REMOVE_RECURSE "${WORK}")
set(prefix "${WORK}/prefix")

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

run("cmake --install" ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}")
foreach(f include/mechlab/mechlab.h include/mechlab/hooks/hooked_transformer.h
          lib/cmake/mechlab/mechlabConfig.cmake lib/libmechlab_model.a)
  if(NOT EXISTS "${prefix}/${f}")
    message(FATAL_ERROR "the installed package lacks ${f}")
  endif()
endforeach()
run("configuring the user project" ${CMAKE_COMMAND} -S "${SOURCE}" -B "${WORK}/build" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${prefix}" "-DTorch_DIR=${Torch_DIR}")
run("building the user project" ${CMAKE_COMMAND} --build "${WORK}/build")
run("running the user project" "${WORK}/build/experiment")
if(NOT last_output MATCHES "cached 2 residuals; logits \\[1, 4, 512\\]")
  message(FATAL_ERROR "the user project printed something else:\n${last_output}")
endif()
message(STATUS "installed package works: ${last_output}")
file(REMOVE_RECURSE "${WORK}")
