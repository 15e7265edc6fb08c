/* SwiftPM needs one source file per C target; the public header is the point. */
#include "sevpeb.h"
