# Sourced, not run: how the CPU loss kernel is compiled, once per instruction set with that
# register's width (distill4j_cpu_kernel.c says why). One place for native/build-cpu-kernels.sh (the
# library) and bench/run-cpu-kernel.sh (the C timing harness), so both time the same code.
# No -ffast-math (the sums' order and IEEE -inf/NaN matter); -fno-math-errno and
# -fno-trapping-math let the vector compares and selects stay vectors.
cpu_kernel_flags=(-std=gnu11 -O3 -fPIC -Wall -Wextra -Werror -Wno-psabi -fno-math-errno -fno-trapping-math)

# compile_cpu_kernel_copies CC INCLUDE_DIR KERNEL_SOURCE OBJECT_DIR SYMBOL_PREFIX
#   -> OBJECT_DIR/{avx512,avx2,sse2}.o defining SYMBOL_PREFIX{avx512,avx2,sse2}
compile_cpu_kernel_copies() {
  local cc="$1" inc="$2" source="$3" obj="$4" prefix="$5"
  "$cc" "${cpu_kernel_flags[@]}" -I"$inc" -march=x86-64-v4 -DD4J_W=16 -DD4J_KERNEL="${prefix}avx512" -c -o "$obj/avx512.o" "$source"
  "$cc" "${cpu_kernel_flags[@]}" -I"$inc" -march=x86-64-v3 -DD4J_W=8 -DD4J_KERNEL="${prefix}avx2" -c -o "$obj/avx2.o" "$source"
  "$cc" "${cpu_kernel_flags[@]}" -I"$inc" -march=x86-64 -DD4J_W=4 -DD4J_KERNEL="${prefix}sse2" -c -o "$obj/sse2.o" "$source"
}
