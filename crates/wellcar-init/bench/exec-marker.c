#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    int fd = open("/dev/kmsg", O_WRONLY);
    if (fd >= 0) { write(fd, "<6>exec-marker: exec systemd\n", 29); close(fd); }
    execv("/usr/lib/systemd/systemd", argv);
    return 1;
}
