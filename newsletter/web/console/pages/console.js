// The console's one script: no framework, no build step. Pages work without it; it adds
// what needs a script (live counters over server-sent events, confirmations).
"use strict";
