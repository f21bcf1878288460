/* uvip: connector API. Included by <uvip.h>; do not include directly.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_CONNECTOR_H
#define UVIP_CONNECTOR_H

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif /* UVIP_CONNECTOR_H */
