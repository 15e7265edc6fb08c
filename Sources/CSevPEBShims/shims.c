#include "sevpeb_shims.h"

static _Thread_local char errbuf[SEVPEB_SHIM_ERRBUF];

/* The calling thread's last-error buffer (NUL-terminated, SEVPEB_SHIM_ERRBUF bytes). */
char *spbshim_errbuf(void) { return errbuf; }
