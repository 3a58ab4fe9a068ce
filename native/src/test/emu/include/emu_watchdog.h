// The emulation harnesses' hang detector (loss_emu.cpp, decoder_emu.cpp). It watches progress, not
// the whole run's wall clock: a protocol fault shows as blocks waiting forever on a flag, so a case
// that has not finished within D4J_EMU_CASE_LIMIT seconds (default 600) fails the run, naming the
// case and how long it ran; exit code 124, as timeout(1) gives. The run prints its slowest case,
// which is what the limit is sized against: 36-42 s (loss_emu's split f32 JSD 31x1024, K = 16) on a
// 2-core machine busy with three other builds, where the whole run took 13 minutes (2026-12-06).
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <unistd.h>

struct EmuWatchdog {
    std::mutex lock;
    std::string current;                                 // the running case's name, "" between cases
    std::chrono::steady_clock::time_point started;       // when it started
    int limitSeconds = 600;
    double slowest = 0;                                  // the longest finished case, seconds
    std::string slowestName;
    const int* checksDone = nullptr;                     // the harness's check counter, for the message

    void begin(const std::string& name) {
        std::lock_guard<std::mutex> g(lock);
        current = name;
        started = std::chrono::steady_clock::now();
    }
    void end() {
        std::lock_guard<std::mutex> g(lock);
        const double ran = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        if (ran > slowest) { slowest = ran; slowestName = current; }
        current.clear();
    }
    void start(const int* checks) {
        checksDone = checks;
        if (const char* v = std::getenv("D4J_EMU_CASE_LIMIT")) limitSeconds = std::max(1, std::atoi(v));
        std::thread([this] {
            for (;;) {
                std::this_thread::sleep_for(std::chrono::milliseconds(250));
                std::lock_guard<std::mutex> g(lock);
                if (current.empty()) continue;
                const double ran = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
                if (ran > limitSeconds) {
                    std::printf("HUNG %s: no progress for %.0f s (limit D4J_EMU_CASE_LIMIT=%d s); %d checks done before it\n",
                                current.c_str(), ran, limitSeconds, checksDone ? *checksDone : -1);
                    std::fflush(stdout);
                    _exit(124);  // the blocks' threads are still waiting: end the process without joining them
                }
            }
        }).detach();
    }
    void printSlowest() {
        std::printf("slowest case %.2f s (%s); a case fails as hung after %d s\n", slowest, slowestName.c_str(), limitSeconds);
    }
};
