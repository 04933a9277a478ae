/*
 * The XDSM object functions from C, against a real node daemon and its
 * mount: dm_get_mountinfo, dm_get_dioinfo, dm_handle_to_path,
 * dm_open_by_handle, dm_set/clear/getall_inherit and the
 * dm_create/mkdir/symlink_by_handle calls.
 *
 * argv[1]: this node's mount; argv[2], argv[3]: the inode numbers of a
 * directory "far/deep" and its file "file" that another node made and this
 * node's kernel has never seen. Prints KEY=value lines for the test.
 */
#include <dmapi.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MUST(call) do { if ((call) != 0) { printf("FAILED %s errno=%d (%s)\n", #call, errno, strerror(errno)); exit(1); } } while (0)
#define ERRNO(call) ((call) < 0 ? errno : 0)

static char buf[1 << 16];

static dm_attrname_t attr(const char *s)
{
	dm_attrname_t a;
	memset(&a, 0, sizeof a);
	strncpy((char *)a.an_chars, s, DM_ATTR_NAME_SIZE);
	return a;
}

/* A handle from a bulk scan: how an HSM finds files it has no path for. */
static int find(dm_sessid_t sid, void *fsh, size_t fshlen, dm_ino_t ino, void **hp, size_t *hlenp)
{
	dm_attrloc_t loc;
	size_t rlen;
	int more;

	MUST(dm_init_attrloc(sid, fsh, fshlen, DM_NO_TOKEN, &loc));
	do {
		more = dm_get_bulkattr(sid, fsh, fshlen, DM_NO_TOKEN, DM_AT_STAT, &loc, sizeof buf, buf, &rlen);
		if (more < 0)
			return -1;
		for (dm_stat_t *s = (dm_stat_t *)buf; rlen && s; s = DM_STEP_TO_NEXT(s, dm_stat_t *))
			if (s->dt_ino == ino) {
				*hlenp = DM_GET_LEN(s, dt_handle);
				*hp = malloc(*hlenp);
				memcpy(*hp, DM_GET_VALUE(s, dt_handle, void *), *hlenp);
				return 0;
			}
	} while (more == 1);
	errno = ENOENT;
	return -1;
}

int main(int argc, char **argv)
{
	char *ver, path[8192], d[4096];
	dm_sessid_t sid;
	void *fsh, *rooth, *dh, *fh;
	size_t fshlen, roothlen, dhlen, fhlen, rlen;

	if (argc != 4)
		return 2;
	MUST(dm_init_service(&ver));
	MUST(dm_create_session(DM_NO_SESSION, "c-objects", &sid));
	MUST(dm_path_to_fshandle(argv[1], &fsh, &fshlen));
	MUST(dm_path_to_handle(argv[1], &rooth, &roothlen));
	snprintf(d, sizeof d, "%s/d", argv[1]);
	MUST(mkdir(d, 0755));
	MUST(dm_path_to_handle(d, &dh, &dhlen));
	snprintf(path, sizeof path, "%s/f", d);
	{
		int fd = open(path, O_CREAT | O_WRONLY, 0644);
		if (fd < 0 || write(fd, "object bytes", 12) != 12 || close(fd))
			return 3;
	}
	MUST(dm_path_to_handle(path, &fh, &fhlen));

	/* The mount as its mount event had it. */
	{
		dm_mount_event_t *me = (dm_mount_event_t *)buf;
		size_t small;
		int e;

		MUST(dm_get_mountinfo(sid, fsh, fshlen, DM_NO_TOKEN, sizeof buf, buf, &rlen));
		e = ERRNO(dm_get_mountinfo(sid, fsh, fshlen, DM_NO_TOKEN, 8, buf + 8192, &small));
		printf("MOUNT path=%s media=%s fs_same=%d root_same=%d short=%d need_ok=%d bad=%d\n",
		       DM_GET_VALUE(me, me_name1, char *), DM_GET_VALUE(me, me_name2, char *),
		       dm_handle_cmp(DM_GET_VALUE(me, me_handle1, void *), DM_GET_LEN(me, me_handle1), fsh, fshlen) == 0,
		       dm_handle_cmp(DM_GET_VALUE(me, me_roothandle, void *), DM_GET_LEN(me, me_roothandle), rooth,
				     roothlen) == 0,
		       e, small == rlen, ERRNO(dm_get_mountinfo(sid, fh, fhlen, DM_NO_TOKEN, sizeof buf, buf, &rlen)));
	}

	{
		dm_dioinfo_t dio;
		MUST(dm_get_dioinfo(sid, fh, fhlen, DM_NO_TOKEN, &dio));
		printf("DIO mem=%u min=%u max=%u only=%d nullout=%d\n", dio.d_mem, dio.d_miniosz, dio.d_maxiosz,
		       dio.d_dio_only, ERRNO(dm_get_dioinfo(sid, fh, fhlen, DM_NO_TOKEN, NULL)));
	}

	/* Paths: a file in its directory, the directory itself, a short buffer,
	   and a file that is not in the directory named. */
	{
		char p1[4096], p2[4096];
		size_t l1, l2, need = 0;
		int e_short = ERRNO(dm_handle_to_path(dh, dhlen, fh, fhlen, 4, p2, &need));
		int e_notin = ERRNO(dm_handle_to_path(rooth, roothlen, fh, fhlen, sizeof p2, p2, &l2));

		MUST(dm_handle_to_path(dh, dhlen, fh, fhlen, sizeof p1, p1, &l1));
		MUST(dm_handle_to_path(dh, dhlen, dh, dhlen, sizeof p2, p2, &l2));
		printf("PATH file=%s dir=%s len=%zu short=%d need=%zu notin=%d\n", p1, p2, l1, e_short, need, e_notin);
	}

	/* Objects by handle, one this node's kernel knows and two it never saw. */
	{
		void *farh, *fileh;
		size_t farhlen, filehlen;
		char got[64] = { 0 }, p[4096];
		struct stat st;
		int fd;

		fd = dm_open_by_handle(fh, fhlen, O_RDONLY);
		if (fd < 0 || read(fd, got, sizeof got - 1) < 0)
			printf("FAILED dm_open_by_handle errno=%d\n", errno), exit(1);
		close(fd);
		printf("OPEN known=%s\n", got);

		MUST(find(sid, fsh, fshlen, strtoull(argv[2], 0, 10), &farh, &farhlen));
		MUST(find(sid, fsh, fshlen, strtoull(argv[3], 0, 10), &fileh, &filehlen));
		memset(got, 0, sizeof got);
		fd = dm_open_by_handle(fileh, filehlen, O_RDONLY);
		if (fd < 0 || read(fd, got, sizeof got - 1) < 0)
			printf("FAILED dm_open_by_handle(unseen file) errno=%d\n", errno), exit(1);
		close(fd);
		fd = dm_open_by_handle(farh, farhlen, O_RDONLY | O_DIRECTORY);
		if (fd < 0 || fstat(fd, &st))
			printf("FAILED dm_open_by_handle(unseen dir) errno=%d\n", errno), exit(1);
		close(fd);
		MUST(dm_handle_to_path(farh, farhlen, fileh, filehlen, sizeof p, p, &rlen));
		printf("OPEN unseen=%s dir_ino=%llu dir=%d path=%s fs_handle=%d\n", got, (unsigned long long)st.st_ino,
		       S_ISDIR(st.st_mode), p, ERRNO(dm_open_by_handle(fsh, fshlen, O_RDONLY)));
	}

	/* Inheritance: new regular files in d get d's "hsm" attribute. */
	{
		dm_attrname_t hsm = attr("hsm"), none = attr("none");
		dm_inherit_t ih[4];
		unsigned int n = 0;
		void *nh;
		size_t nhlen;
		int e_short, fd;

		MUST(dm_set_dmattr(sid, dh, dhlen, DM_NO_TOKEN, &hsm, 0, 6, "tier-a"));
		MUST(dm_set_inherit(sid, fsh, fshlen, DM_NO_TOKEN, &hsm, S_IFREG));
		e_short = ERRNO(dm_getall_inherit(sid, fsh, fshlen, DM_NO_TOKEN, 0, ih, &n));
		printf("INHERIT_SHORT errno=%d n=%u\n", e_short, n);
		MUST(dm_getall_inherit(sid, fsh, fshlen, DM_NO_TOKEN, 4, ih, &n));
		printf("INHERIT n=%u name=%.8s type=%o badmode=%d onfile=%d\n", n, (char *)ih[0].ih_name.an_chars,
		       ih[0].ih_filetype, ERRNO(dm_set_inherit(sid, fsh, fshlen, DM_NO_TOKEN, &hsm, 0)),
		       ERRNO(dm_set_inherit(sid, fh, fhlen, DM_NO_TOKEN, &hsm, S_IFREG)));
		snprintf(path, sizeof path, "%s/new", d);
		fd = open(path, O_CREAT | O_WRONLY, 0644);
		if (fd < 0 || close(fd))
			return 3;
		MUST(dm_path_to_handle(path, &nh, &nhlen));
		memset(buf, 0, 64);
		MUST(dm_get_dmattr(sid, nh, nhlen, DM_NO_TOKEN, &hsm, sizeof buf, buf, &rlen));
		printf("INHERITED file=%.*s", (int)rlen, buf);
		snprintf(path, sizeof path, "%s/newdir", d);
		MUST(mkdir(path, 0755));
		MUST(dm_path_to_handle(path, &nh, &nhlen));
		printf(" dir=%d", ERRNO(dm_get_dmattr(sid, nh, nhlen, DM_NO_TOKEN, &hsm, sizeof buf, buf, &rlen)));
		MUST(dm_clear_inherit(sid, fsh, fshlen, DM_NO_TOKEN, &hsm));
		printf(" clear_again=%d clear_none=%d", ERRNO(dm_clear_inherit(sid, fsh, fshlen, DM_NO_TOKEN, &hsm)),
		       ERRNO(dm_clear_inherit(sid, fsh, fshlen, DM_NO_TOKEN, &none)));
		snprintf(path, sizeof path, "%s/after", d);
		fd = open(path, O_CREAT | O_WRONLY, 0644);
		if (fd < 0 || close(fd))
			return 3;
		MUST(dm_path_to_handle(path, &nh, &nhlen));
		printf(" after_clear=%d\n", ERRNO(dm_get_dmattr(sid, nh, nhlen, DM_NO_TOKEN, &hsm, sizeof buf, buf, &rlen)));
	}

	/* Objects made again with the handles they had (a restore). */
	{
		const char *kinds[] = { "file", "dir", "link" };
		for (int k = 0; k < 3; k++) {
			void *vh, *again;
			size_t vhlen, againlen;
			struct stat st;
			char link[64] = { 0 };
			int r, e_again;

			snprintf(path, sizeof path, "%s/victim-%s", d, kinds[k]);
			if (k == 1 ? mkdir(path, 0755) : k == 2 ? symlink("somewhere", path) : close(open(path, O_CREAT | O_WRONLY, 0644)))
				return 3;
			MUST(dm_path_to_handle(path, &vh, &vhlen));
			if (k == 1 ? rmdir(path) : unlink(path))
				return 3;
			if (k == 0)
				r = dm_create_by_handle(sid, dh, dhlen, DM_NO_TOKEN, vh, vhlen, "reborn-file");
			else if (k == 1)
				r = dm_mkdir_by_handle(sid, dh, dhlen, DM_NO_TOKEN, vh, vhlen, "reborn-dir");
			else
				r = dm_symlink_by_handle(sid, dh, dhlen, DM_NO_TOKEN, vh, vhlen, "reborn-link", "over/there");
			if (r)
				printf("FAILED by_handle %s errno=%d\n", kinds[k], errno), exit(1);
			e_again = ERRNO(dm_create_by_handle(sid, dh, dhlen, DM_NO_TOKEN, vh, vhlen, "twice"));
			snprintf(path, sizeof path, "%s/reborn-%s", d, kinds[k]);
			MUST(lstat(path, &st));
			MUST(dm_path_to_handle(path, &again, &againlen));
			if (k == 2 && readlink(path, link, sizeof link - 1) < 0)
				return 3;
			printf("REBORN %s same=%d mode=%o uid=%u again=%d link=%s\n", kinds[k],
			       dm_handle_cmp(vh, vhlen, again, againlen) == 0, st.st_mode, st.st_uid, e_again,
			       k == 2 ? link : "-");
		}
		printf("BYHANDLE_ERR fs=%d name=%d exists=%d\n",
		       ERRNO(dm_create_by_handle(sid, dh, dhlen, DM_NO_TOKEN, fsh, fshlen, "x")),
		       ERRNO(dm_create_by_handle(sid, dh, dhlen, DM_NO_TOKEN, fh, fhlen, "a/b")),
		       ERRNO(dm_create_by_handle(sid, dh, dhlen, DM_NO_TOKEN, fh, fhlen, "y")));
	}
	MUST(dm_destroy_session(sid));
	printf("DONE\n");
	return 0;
}
