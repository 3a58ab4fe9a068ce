// CPU emulation (cuda_emu.h): cooperative_groups::this_cluster() and cluster_group are defined there.
#pragma once
