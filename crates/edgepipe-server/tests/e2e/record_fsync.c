/* LD_PRELOAD shim for the atomic-replace test: appends "fsync <path>" for every fsync and
 * "rename <from> <to>" for every rename to the file named by EDGEPIPE_TEST_FSYNC_LOG, so a
 * test can check that a file renamed into place has its directory fsynced afterwards. Built
 * by the test with the system C compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void record(const char *line) {
    const char *log = getenv("EDGEPIPE_TEST_FSYNC_LOG");
    if (!log) {
        return;
    }
    int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        return;
    }
    ssize_t ignored = write(fd, line, strlen(line));
    (void)ignored;
    close(fd);
}

int fsync(int fd) {
    static int (*real)(int) = 0;
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    int rc = real(fd);
    char link[64], target[PATH_MAX], line[PATH_MAX + 16];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n > 0 && rc == 0) {
        target[n] = 0;
        snprintf(line, sizeof line, "fsync %s\n", target);
        record(line);
    }
    return rc;
}

int rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *) = 0;
    if (!real) {
        real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    }
    int rc = real(from, to);
    if (rc == 0) {
        char line[2 * PATH_MAX + 16];
        snprintf(line, sizeof line, "rename %s %s\n", from, to);
        record(line);
    }
    return rc;
}
