"""Which mappings the post-compile release drops: the compiler libraries' code, nothing else."""

from __future__ import annotations

from dataplane.memory import release_compiler_code

MAPS = """\
7f0000000000-7f0000200000 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0000200000-7f0003200000 r-xp 00200000 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0003200000-7f0003400000 r--p 03200000 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0003400000-7f0003401000 rw-p 03400000 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0004000000-7f0005000000 r-xp 00100000 08:01 2 /usr/lib/x86_64-linux-gnu/libclang-cpp.so.14
7f0006000000-7f0006100000 r-xp 00020000 08:01 3 /usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0
7f0007000000-7f0007100000 r-xp 00020000 08:01 4 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0008000000-7f0008021000 rw-p 00000000 00:00 0
"""


def test_only_the_compiler_libraries_code_is_released():
    released = release_compiler_code(MAPS)
    assert released == 0x3000000 + 0x1000000      # libLLVM's and libclang-cpp's r-xp mappings only


def test_nothing_to_release_without_the_compiler():
    assert release_compiler_code("7f0006000000-7f0006100000 r-xp 00020000 08:01 3 /usr/lib/libbcc.so.0\n") == 0
