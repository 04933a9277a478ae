/*
 * XDSM's error cases for every function that takes a session, a handle or
 * a token, from C against a real node daemon: each call is made with a
 * session that does not exist (EINVAL), a malformed handle (EBADF), the
 * handle of a file that was removed (EBADF), and a token that is no event
 * of the session (EINVAL); then the calls that need a right, made with a
 * token that holds none (EACCES).
 *
 * argv[1]: a directory on the node's mount. One line per case:
 * "CASE pass function got=<errno> want=<errno>"; then "DONE".
 */
#include <dmapi.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MUST(call) do { if ((call) != 0) { printf("FAILED %s errno=%d (%s)\n", #call, errno, strerror(errno)); exit(1); } } while (0)

static char buf[1 << 16];

/*
 * Every call, with its session S, file handle FH/FHL, file-system handle
 * FS/FSL, directory handle DH/DHL and token T (or RT, a real token, for the
 * calls that refuse DM_NO_TOKEN). X(name, takes_token, file, call): file 1 takes
 * a file handle, 2 makes an object with one, 0 takes another handle, -1 none.
 */
#define CALLS(S, FH, FHL, FS, FSL, DH, DHL, T, RT)                                                        \
	X("get_fileattr", 1, 1, dm_get_fileattr(S, FH, FHL, T, DM_AT_STAT, &st))                          \
	X("set_fileattr", 1, 1, dm_set_fileattr(S, FH, FHL, T, DM_AT_MODE, &fa))                          \
	X("get_dirattrs", 1, 0, dm_get_dirattrs(S, DH, DHL, T, DM_AT_STAT, &loc, sizeof buf, buf, &rlen)) \
	X("init_attrloc", 1, 0, dm_init_attrloc(S, FS, FSL, T, &loc))                                     \
	X("get_bulkattr", 1, 0, dm_get_bulkattr(S, FS, FSL, T, DM_AT_STAT, &loc, sizeof buf, buf, &rlen)) \
	X("get_bulkall", 1, 0, dm_get_bulkall(S, FS, FSL, T, DM_AT_STAT, &an, &loc, sizeof buf, buf, &rlen)) \
	X("read_invis", 1, 1, dm_read_invis(S, FH, FHL, T, 0, 4, buf))                                    \
	X("write_invis", 1, 1, dm_write_invis(S, FH, FHL, T, 0, 0, 1, buf))                               \
	X("sync_by_handle", 1, 1, dm_sync_by_handle(S, FH, FHL, T))                                       \
	X("probe_hole", 1, 1, dm_probe_hole(S, FH, FHL, T, 0, 0, &roff, &rsize))                          \
	X("punch_hole", 1, 1, dm_punch_hole(S, FH, FHL, T, 0, 0))                                         \
	X("get_allocinfo", 1, 1, dm_get_allocinfo(S, FH, FHL, T, &off, 4, ext, &n))                       \
	X("set_region", 1, 1, dm_set_region(S, FH, FHL, T, 0, NULL, &exact))                              \
	X("get_region", 1, 1, dm_get_region(S, FH, FHL, T, 4, reg, &n))                                   \
	X("set_dmattr", 1, 1, dm_set_dmattr(S, FH, FHL, T, &an, 0, 1, "x"))                               \
	X("get_dmattr", 1, 1, dm_get_dmattr(S, FH, FHL, T, &an, sizeof buf, buf, &rlen))                  \
	X("remove_dmattr", 1, 1, dm_remove_dmattr(S, FH, FHL, T, 0, &an))                                 \
	X("getall_dmattr", 1, 1, dm_getall_dmattr(S, FH, FHL, T, sizeof buf, buf, &rlen))                 \
	X("set_eventlist", 1, 1, dm_set_eventlist(S, FH, FHL, T, &set, DM_EVENT_MAX))                     \
	X("get_eventlist", 1, 1, dm_get_eventlist(S, FH, FHL, T, DM_EVENT_MAX, &set, &n))                 \
	X("set_disp", 1, 0, dm_set_disp(S, FS, FSL, T, &set, DM_EVENT_MAX))                               \
	X("set_return_on_destroy", 1, 0, dm_set_return_on_destroy(S, FS, FSL, T, &an, DM_TRUE))            \
	X("get_mountinfo", 1, 0, dm_get_mountinfo(S, FS, FSL, T, sizeof buf, buf, &rlen))                 \
	X("get_dioinfo", 1, 1, dm_get_dioinfo(S, FH, FHL, T, &dio))                                       \
	X("set_inherit", 1, 0, dm_set_inherit(S, FS, FSL, T, &an, S_IFREG))                               \
	X("clear_inherit", 1, 0, dm_clear_inherit(S, FS, FSL, T, &an))                                    \
	X("getall_inherit", 1, 0, dm_getall_inherit(S, FS, FSL, T, 4, ih, &n))                            \
	X("create_by_handle", 1, 2, dm_create_by_handle(S, DH, DHL, T, FH, FHL, "n1"))                    \
	X("mkdir_by_handle", 1, 2, dm_mkdir_by_handle(S, DH, DHL, T, FH, FHL, "n2"))                      \
	X("symlink_by_handle", 1, 2, dm_symlink_by_handle(S, DH, DHL, T, FH, FHL, "n3", "t"))             \
	X("request_right", 1, 1, dm_request_right(S, FH, FHL, RT, DM_RR_WAIT, DM_RIGHT_SHARED))           \
	X("release_right", 1, 1, dm_release_right(S, FH, FHL, RT))                                        \
	X("query_right", 1, 1, dm_query_right(S, FH, FHL, RT, &right))                                    \
	X("upgrade_right", 1, 1, dm_upgrade_right(S, FH, FHL, RT))                                        \
	X("downgrade_right", 1, 1, dm_downgrade_right(S, FH, FHL, RT))                                    \
	X("obj_ref_hold", 1, 1, dm_obj_ref_hold(S, RT, FH, FHL))                                          \
	X("obj_ref_rele", 1, 1, dm_obj_ref_rele(S, RT, FH, FHL))                                          \
	X("obj_ref_query", 1, 1, dm_obj_ref_query(S, RT, FH, FHL))                                        \
	X("respond_event", 1, -1, dm_respond_event(S, RT, DM_RESP_CONTINUE, 0, 0, NULL))                  \
	X("find_eventmsg", 1, -1, dm_find_eventmsg(S, RT, sizeof buf, buf, &rlen))                        \
	X("pending", 1, -1, dm_pending(S, RT, &delay))                                                    \
	X("move_event", 1, -1, dm_move_event(S, RT, sid, &moved))                                         \
	X("query_session", 0, -1, dm_query_session(S, sizeof buf, buf, &rlen))                            \
	X("getall_tokens", 0, -1, dm_getall_tokens(S, 4, toks, &n))                                       \
	X("getall_disp", 0, -1, dm_getall_disp(S, sizeof buf, buf, &rlen))                                \
	X("get_events", 0, -1, dm_get_events(S, 1, 0, sizeof buf, buf, &rlen))                            \
	X("create_userevent", 0, -1, dm_create_userevent(S, 0, NULL, &moved))                             \
	X("send_msg", 0, -1, dm_send_msg(S, DM_MSGTYPE_ASYNC, 1, "m"))                                    \
	X("destroy_session", 0, -1, dm_destroy_session(S))

int main(int argc, char **argv)
{
	char *ver, path[8192];
	dm_sessid_t sid, bad_sid;
	void *fsh, *fh, *dh, *gone;
	size_t fshlen, fhlen, dhlen, gonelen, rlen;
	dm_token_t ut, bad_token = 987654, moved;
	dm_stat_t st;
	dm_fileattr_t fa = { 0 };
	dm_attrloc_t loc = 0;
	dm_attrname_t an = { { 'h', 's', 'm' } };
	dm_off_t off = 0, roff;
	dm_size_t rsize;
	dm_extent_t ext[4];
	dm_region_t reg[4];
	dm_boolean_t exact;
	dm_eventset_t set;
	dm_dioinfo_t dio;
	dm_inherit_t ih[4];
	dm_right_t right;
	dm_timestruct_t delay = { 1, 0 };
	dm_token_t toks[4];
	unsigned int n;
	char junk[4] = "junk";
	int fd;

	if (argc != 2)
		return 2;
	DMEV_ZERO(set);
	MUST(dm_init_service(&ver));
	MUST(dm_create_session(DM_NO_SESSION, "c-errors", &sid));
	/* A session that existed and was destroyed. */
	MUST(dm_create_session(DM_NO_SESSION, "gone", &bad_sid));
	MUST(dm_destroy_session(bad_sid));
	MUST(dm_path_to_fshandle(argv[1], &fsh, &fshlen));
	MUST(dm_path_to_handle(argv[1], &dh, &dhlen));
	snprintf(path, sizeof path, "%s/f", argv[1]);
	fd = open(path, O_CREAT | O_WRONLY, 0644);
	if (fd < 0 || write(fd, "data", 4) != 4 || close(fd))
		return 3;
	MUST(dm_path_to_handle(path, &fh, &fhlen));
	snprintf(path, sizeof path, "%s/gone", argv[1]);
	if (close(open(path, O_CREAT | O_WRONLY, 0644)))
		return 3;
	MUST(dm_path_to_handle(path, &gone, &gonelen));
	if (unlink(path))
		return 3;
	MUST(dm_create_userevent(sid, 0, NULL, &ut));

#define X(name, tok, file, call) \
	printf("CASE badsid %s got=%d want=%d\n", name, (call) < 0 ? errno : 0, EINVAL);
	CALLS(bad_sid, fh, fhlen, fsh, fshlen, dh, dhlen, DM_NO_TOKEN, ut)
#undef X
#define X(name, tok, file, call) \
	if (file >= 0)           \
		printf("CASE junkhandle %s got=%d want=%d\n", name, (call) < 0 ? errno : 0, EBADF);
	CALLS(sid, junk, 4, junk, 4, junk, 4, DM_NO_TOKEN, ut)
#undef X
	/* A removed file's handle: calls on the file (not those that make one with it). */
#define X(name, tok, file, call)                                                                          \
	if (file == 1)                                                                                       \
		printf("CASE stalehandle %s got=%d want=%d\n", name, (call) < 0 ? errno : 0, EBADF);
	CALLS(sid, gone, gonelen, fsh, fshlen, dh, dhlen, DM_NO_TOKEN, ut)
#undef X
#define X(name, tok, file, call) \
	if (tok)                 \
		printf("CASE badtoken %s got=%d want=%d\n", name, (call) < 0 ? errno : 0, EINVAL);
	CALLS(sid, fh, fhlen, fsh, fshlen, dh, dhlen, bad_token, bad_token)
#undef X

	/* A token that holds no right: every call that needs one (shared to
	   look, exclusive to change). */
#define NORIGHT(name, call) printf("CASE noright %s got=%d want=%d\n", name, (call) < 0 ? errno : 0, EACCES);
	NORIGHT("write_invis", dm_write_invis(sid, fh, fhlen, ut, 0, 0, 1, buf))
	NORIGHT("punch_hole", dm_punch_hole(sid, fh, fhlen, ut, 0, 0))
	NORIGHT("get_fileattr", dm_get_fileattr(sid, fh, fhlen, ut, DM_AT_STAT, &st))
	NORIGHT("set_fileattr", dm_set_fileattr(sid, fh, fhlen, ut, DM_AT_MODE, &fa))
	NORIGHT("get_dirattrs", dm_get_dirattrs(sid, dh, dhlen, ut, DM_AT_STAT, &loc, sizeof buf, buf, &rlen))
	NORIGHT("read_invis", dm_read_invis(sid, fh, fhlen, ut, 0, 4, buf))
	NORIGHT("sync_by_handle", dm_sync_by_handle(sid, fh, fhlen, ut))
	NORIGHT("probe_hole", dm_probe_hole(sid, fh, fhlen, ut, 0, 0, &roff, &rsize))
	NORIGHT("get_allocinfo", dm_get_allocinfo(sid, fh, fhlen, ut, &off, 4, ext, &n))
	NORIGHT("set_region", dm_set_region(sid, fh, fhlen, ut, 0, NULL, &exact))
	NORIGHT("get_region", dm_get_region(sid, fh, fhlen, ut, 4, reg, &n))
	NORIGHT("set_dmattr", dm_set_dmattr(sid, fh, fhlen, ut, &an, 0, 1, "x"))
	NORIGHT("get_dmattr", dm_get_dmattr(sid, fh, fhlen, ut, &an, sizeof buf, buf, &rlen))
	NORIGHT("remove_dmattr", dm_remove_dmattr(sid, fh, fhlen, ut, 0, &an))
	NORIGHT("getall_dmattr", dm_getall_dmattr(sid, fh, fhlen, ut, sizeof buf, buf, &rlen))
	NORIGHT("set_eventlist", dm_set_eventlist(sid, fh, fhlen, ut, &set, DM_EVENT_MAX))
	NORIGHT("get_eventlist", dm_get_eventlist(sid, fh, fhlen, ut, DM_EVENT_MAX, &set, &n))
	NORIGHT("get_dioinfo", dm_get_dioinfo(sid, fh, fhlen, ut, &dio))
	NORIGHT("create_by_handle", dm_create_by_handle(sid, dh, dhlen, ut, gone, gonelen, "n4"))
	/* Shared is enough to look, not to change. */
	MUST(dm_request_right(sid, fh, fhlen, ut, DM_RR_WAIT, DM_RIGHT_SHARED));
	printf("CASE shared get_dmattr got=%d want=%d\n",
	       dm_get_dmattr(sid, fh, fhlen, ut, &an, sizeof buf, buf, &rlen) < 0 ? errno : 0, ENOENT);
	NORIGHT("shared set_dmattr", dm_set_dmattr(sid, fh, fhlen, ut, &an, 0, 1, "x"))
	MUST(dm_release_right(sid, fh, fhlen, ut));
	printf("CASE noright release_right got=%d want=%d\n", dm_release_right(sid, fh, fhlen, ut) < 0 ? errno : 0,
	       EACCES);
	printf("CASE noright obj_ref_rele got=%d want=%d\n", dm_obj_ref_rele(sid, ut, fh, fhlen) < 0 ? errno : 0,
	       EACCES);
	printf("CASE noright obj_ref_query got=%d want=0\n", dm_obj_ref_query(sid, ut, fh, fhlen) < 0 ? errno : 0);
	MUST(dm_respond_event(sid, ut, DM_RESP_CONTINUE, 0, 0, NULL));
	MUST(dm_destroy_session(sid));
	printf("DONE\n");
	return 0;
}
