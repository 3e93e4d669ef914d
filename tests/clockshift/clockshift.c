/* clockshift: move this process's wall clock (and its children's) by a fixed number of
 * seconds, leaving the monotonic clocks alone; as if the machine's clock were set to
 * another hour or date.
 *
 * LD_PRELOAD=clockshift.so POLELINK_CLOCK_SHIFT_S=<seconds> command...
 *
 * Shifted: clock_gettime(CLOCK_REALTIME*, CLOCK_TAI), gettimeofday(), time(), and
 * clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME) (its deadline is taken back to the real
 * clock). Not shifted: the monotonic and boot clocks (what timeouts use) and file times
 * (the kernel's). Not corrected: an absolute CLOCK_REALTIME deadline a program computed
 * from the shifted clock and waits for on a condition variable, a semaphore or a timer
 * lasts its timeout plus the shift. The shift is clamped to +-200 years; a value that is
 * not a number is 0.
 * Debian's libfaketime 0.9.10 was tried first: it hangs Python's threading.Event.wait()
 * when it fakes CLOCK_MONOTONIC and fails time.sleep() with EINVAL when told not to.
 * tests/clockshift/__init__.py builds this file and runs commands under it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long shift_ns;
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_clock_nanosleep)(clockid_t, int, const struct timespec *, struct timespec *);

static void setup(void) {
    if (real_clock_gettime) return;
    const char *s = getenv("POLELINK_CLOCK_SHIFT_S");
    double shift_s = s ? strtod(s, NULL) : 0.0;
    const double limit = 200.0 * 366 * 86400;    /* well inside a long long of ns */
    if (!(shift_s == shift_s)) shift_s = 0.0;    /* NaN */
    if (shift_s > limit) shift_s = limit;
    if (shift_s < -limit) shift_s = -limit;
    shift_ns = (long long)(shift_s * 1e9);
    real_clock_nanosleep = dlsym(RTLD_NEXT, "clock_nanosleep");
    real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
}

__attribute__((constructor)) static void init(void) { setup(); }

static void add(struct timespec *ts, long long ns) {
    long long t = (long long)ts->tv_nsec + ns % 1000000000LL;
    ts->tv_sec += ns / 1000000000LL + t / 1000000000LL;
    t %= 1000000000LL;
    if (t < 0) { t += 1000000000LL; ts->tv_sec -= 1; }
    ts->tv_nsec = t;
}

static int is_wall(clockid_t id) {
    return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE || id == CLOCK_TAI;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    setup();
    int r = real_clock_gettime(id, ts);
    if (r == 0 && is_wall(id)) add(ts, shift_ns);
    return r;
}

#pragma GCC diagnostic ignored "-Wnonnull-compare"  /* glibc says tv is never NULL */
int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    int r = clock_gettime(CLOCK_REALTIME, &ts);
    if (r == 0 && tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    return r;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}

int clock_nanosleep(clockid_t id, int flags, const struct timespec *req, struct timespec *rem) {
    setup();
    if ((flags & TIMER_ABSTIME) && is_wall(id) && req) {
        struct timespec real = *req;
        add(&real, -shift_ns);
        return real_clock_nanosleep(id, flags, &real, rem);
    }
    return real_clock_nanosleep(id, flags, req, rem);
}
