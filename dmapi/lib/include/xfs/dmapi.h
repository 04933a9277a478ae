/* <xfs/dmapi.h>: where XFS DMAPI programs include the interface from. */
#include <dmapi.h>
