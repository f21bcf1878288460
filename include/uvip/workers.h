/* uvip: workers API. Included by <uvip.h>; do not include directly.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_WORKERS_H
#define UVIP_WORKERS_H

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif /* UVIP_WORKERS_H */
