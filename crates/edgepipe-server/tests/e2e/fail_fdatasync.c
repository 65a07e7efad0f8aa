/* LD_PRELOAD shim for the fsync-failure test: once the file named by
 * EDGEPIPE_TEST_FAIL_FDATASYNC_FLAG exists, every fdatasync fails with EIO, as a dying disk's
 * would. Built by the test with the system C compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

int fdatasync(int fd) {
    static int (*real)(int) = 0;
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    const char *flag = getenv("EDGEPIPE_TEST_FAIL_FDATASYNC_FLAG");
    if (flag && access(flag, F_OK) == 0) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}
