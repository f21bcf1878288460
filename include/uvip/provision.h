/* uvip: provision API. Included by <uvip.h>; do not include directly.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_PROVISION_H
#define UVIP_PROVISION_H

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif /* UVIP_PROVISION_H */
