// Package bpf holds the XDP data plane of xdpfw: the C program, the map
// layout it reads, the compiler that turns rule sets into map contents, and
// the code that loads, attaches, pins, adopts and updates it.
package bpf

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -mcpu=v3 -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type fw_limits -type fw_field -type fw_action -type fw_rule_flag -type fw_stat -type fw_lpm4_key -type fw_lpm6_key -type fw_bitvec -type fw_rule -type fw_gen_info -type fw_settings -type fw_counter -type fw_rule_name -type fw_range4 -type fw_v4_direct -type fw_v4_line -type fw_page -type fw_range6 -type fw_active -type fw_limit -type fw_limit_per -type fw_bucket -type fw_source_key -type fw_sampling -type fw_sample_reader -type fw_sampling_flag -type fw_sample_win -type fw_sample_stat -type fw_sample -type fw_source_sample -type fw_sample_consumer firewall firewall.c -- -I.
