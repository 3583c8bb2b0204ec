/* Redis's INCRBYFLOAT arithmetic on this machine's C long double, for the reference table of
 * crates/crema/src/consensus/long_double_tests.rs (built and run by scripts/long_double_cases.py).
 * Reads "current<TAB>increment" lines; prints the reply Redis would store, or ERR_NOT_FLOAT /
 * ERR_NAN_INF. string2ld and the LD_STR_HUMAN branch of ld2string follow Redis's util.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <math.h>
#include <ctype.h>
/* Redis's string2ld and ld2string(LD_STR_HUMAN), as in util.c */
static int string2ld(const char *s, size_t slen, long double *dp) {
    char buf[5*1024]; long double value; char *eptr;
    if (slen == 0 || slen >= sizeof(buf)) return 0;
    memcpy(buf,s,slen); buf[slen] = '\0';
    errno = 0; value = strtold(buf, &eptr);
    if (isspace(buf[0]) || eptr[0] != '\0' ||
        ((errno == ERANGE) && (value == HUGE_VALL || value == -HUGE_VALL || fpclassify(value) == FP_ZERO)) ||
        errno == EINVAL || isnan(value)) return 0;
    if (dp) *dp = value; return 1;
}
static void human(long double value) {
    static char buf[5*1024]; int l = snprintf(buf,sizeof(buf),"%.17Lf",value);
    if (strchr(buf,'.') != NULL) { char *p = buf+l-1; while(*p == '0') { p--; l--; } if (*p == '.') l--; }
    if (l == 2 && buf[0] == '-' && buf[1] == '0') { buf[0] = '0'; l = 1; }
    buf[l] = 0; printf("%s\n", buf);
}
int main(void) {
    static char line[20000];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        char *tab = strchr(line, '\t'); if (!tab) continue; *tab = 0;
        const char *a = line, *b = tab + 1; long double x, y;
        if (!string2ld(a, strlen(a), &x)) { printf("ERR_NOT_FLOAT\n"); continue; }
        if (!string2ld(b, strlen(b), &y)) { printf("ERR_NOT_FLOAT\n"); continue; }
        x += y;
        if (isnan(x) || isinf(x)) { printf("ERR_NAN_INF\n"); continue; }
        human(x);
    }
}
