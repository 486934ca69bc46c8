#!/usr/bin/perl
# An independent DKIM verifier (Mail::DKIM, not dkimpy): reads a message on stdin and
# prints one line per signature: "<result> <algorithm> d=<domain> s=<selector>".
# DNS comes from the nameserver given as 127.0.0.1:PORT in argv[0].
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my ($host, $port) = split /:/, $ARGV[0];
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => [$host], port => $port, recurse => 1,
                                                  tcp_timeout => 5, udp_timeout => 5));
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\r?\n\z/\015\012/;
    $dkim->PRINT($line);
}
$dkim->CLOSE;
foreach my $sig ($dkim->signatures) {
    printf "%s %s d=%s s=%s\n", $sig->result, $sig->algorithm, $sig->domain, $sig->selector;
}
