/*
 * fail_fsync.c: an LD_PRELOAD shim for the fsync-failure test
 * (crates/cli/tests/it/faults.rs). While the file named by the environment
 * variable FAIL_FSYNC_TRIGGER exists, fsync and fdatasync fail with EIO without
 * syncing anything, as a failing disk's would; otherwise they are the real calls.
 *
 *   cc -shared -fPIC -O2 -o fail_fsync.so fail_fsync.c -ldl
 *   FAIL_FSYNC_TRIGGER=/tmp/fail LD_PRELOAD=./fail_fsync.so sessionizer serve ...
 *   touch /tmp/fail    # from now on every fsync fails
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int triggered(void) {
    const char *path = getenv("FAIL_FSYNC_TRIGGER");
    return path != NULL && access(path, F_OK) == 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (triggered()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (triggered()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    return real(fd);
}
