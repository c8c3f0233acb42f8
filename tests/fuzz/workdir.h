/* Shared by the fuzz targets that need a directory of files: one per
 * process, DIR/<target>.<pid>.XXXXXX under /dev/shm (or /tmp), removed at
 * exit.  A run that crashes, times out or runs out of memory leaves without
 * exit handlers, so each new one first removes the directories of processes
 * that are gone. */
#pragma once

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char workdir_path[128];

static int workdir_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

static void workdir_rm(const char *path)
{
	nftw(path, workdir_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void workdir_cleanup(void)
{
	if (workdir_path[0])
		workdir_rm(workdir_path);
}

/* Make the directory (aborts on failure) and return its path. */
static const char *workdir_make(const char *target)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	char prefix[64];
	size_t pl = (size_t)snprintf(prefix, sizeof prefix, "%s.", target);
	DIR *d = opendir(base);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, prefix, pl))
			continue;
		char *end;
		long pid = strtol(de->d_name + pl, &end, 10);
		if (end == de->d_name + pl || *end != '.' || pid <= 0 || pid == (long)getpid())
			continue;
		if (kill((pid_t)pid, 0) < 0 && errno == ESRCH) {
			char stale[512];
			snprintf(stale, sizeof stale, "%s/%s", base, de->d_name);
			workdir_rm(stale);
		}
	}
	if (d)
		closedir(d);
	snprintf(workdir_path, sizeof workdir_path, "%s/%s.%ld.XXXXXX", base, target, (long)getpid());
	if (!mkdtemp(workdir_path)) {
		perror(workdir_path);
		abort();
	}
	atexit(workdir_cleanup);
	return workdir_path;
}
